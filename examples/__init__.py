"""Small, complete examples of pat_ray with your own code (README, "Your own model")."""
