from pat_ray.cli import main

main()
