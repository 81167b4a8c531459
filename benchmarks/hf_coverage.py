"""Which Hugging Face ``transformers`` image classifiers pat_ray prunes, beside Torch-Pruning.

Every architecture of the installed transformers' ``AutoModelForImageClassification`` mapping,
built with random weights from its default config made small (2 layers, or one block per stage,
10 classes; widths as the architecture's defaults) and wrapped as a user would wrap it:
``forward(x)`` returns ``model(pixel_values=x).logits``; and six BERT-family text classifiers
(``AutoModelForSequenceClassification``, 2 layers at their default widths, 16 token ids in,
``model(input_ids=ids).logits`` out). Each library prunes it to 50% of its
FLOPs with L2 magnitude scores; the pruned model must then run forward and backward (verdicts
and the FLOPs count: ``_coverage.py``). Torch-Pruning is driven as its Hugging Face ViT example
does: global pruning, each attention's query, key and value registered with its head count and
the head attributes set again after each step, the classifier left alone; its pruning ratio is
stepped until the FLOPs reach the budget.

    pip install -e ".[bench]"   # transformers and torch-pruning; then
    python benchmarks/hf_coverage.py --jobs 2   # resumable: rows already measured are kept
    python benchmarks/hf_coverage.py --only vit swin text:bert
    python benchmarks/hf_coverage.py --redo pat_ray   # pat_ray's cells again, after a change

Each library runs on each model in a child process of its own, with a 150 s limit.
"""

from __future__ import annotations

from _coverage import BUDGET, main, step_torch_pruning

SMALL = {"num_hidden_layers": 2, "num_labels": 10}  # set where the config has the field
TEXT = ("albert", "bert", "distilbert", "electra", "roberta", "xlm-roberta")  # text classifiers, ids in
TOKENS = 16
IMAGE_SIZES = (64, None)  # tried in order; None: the config's own image size (or 224)


def architectures() -> dict[str, str | tuple[str, ...]]:
    """Every model type with an image-classification head: model type -> class name."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return dict(sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items()))


def small_config(model_type: str, image_size: int | None):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    fields = config.to_dict()  # its own fields: ``hasattr`` also sees aliases (ConvNeXt's num_hidden_layers)
    for field, value in SMALL.items():
        if field in fields:
            setattr(config, field, value)
    if not config.architectures:  # several heads (DeiT's teacher, Perceiver's): the mapping's first
        named = architectures()[model_type]
        config.architectures = [named if isinstance(named, str) else named[0]]
    for field in ("depths", "num_layers_per_stage"):  # one block per stage
        if isinstance(getattr(config, field, None), list):
            setattr(config, field, [1] * len(getattr(config, field)))
    if image_size is not None and hasattr(config, "image_size"):
        config.image_size = image_size
    return config


def _wrapped(auto_class, config, x, keyword: str):
    """A constructor for the model ``auto_class`` builds from ``config``, wrapped as a user would
    hand it to a pruner (``x`` passed as ``keyword``, logits out), and ``x``, once it ran on it."""
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return self.model(**{keyword: inputs}).logits

    def make():
        torch.manual_seed(0)
        # eager attention: written-out products, which the FLOPs counter sees (SDPA's CPU kernel it does not)
        return Classifier(auto_class.from_config(config, attn_implementation="eager")).eval()

    with torch.no_grad():
        make()(x)
    return make, x


def _build_text(model_type: str):
    """A text classifier (token ids in, logits out) and a batch of ids."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.for_model(model_type, **SMALL)
        return _wrapped(AutoModelForSequenceClassification, config, torch.randint(0, 1000, (2, TOKENS)), "input_ids")
    except Exception as err:  # noqa: BLE001 - the row says why
        return f"could not build: {type(err).__name__}: {str(err)[:100]}"


def _build(model_type: str):
    """A constructor for the wrapped model and an input it runs on: 64 px where it takes that."""
    if model_type.startswith("text:"):
        return _build_text(model_type.removeprefix("text:"))
    import torch
    from transformers import AutoModelForImageClassification

    errors = []
    for image_size in IMAGE_SIZES:
        try:
            config = small_config(model_type, image_size)
            side = image_size or _own_size(config)
            x = torch.randn(2, getattr(config, "num_channels", 3), side, side)
            return _wrapped(AutoModelForImageClassification, config, x, "pixel_values")
        except Exception as err:  # noqa: BLE001 - the next size is tried
            errors.append(f"{type(err).__name__}: {str(err)[:100]}")
    return "could not build: " + " / ".join(errors)


def _own_size(config) -> int:
    size = getattr(config, "image_size", 224)
    return size[0] if isinstance(size, list | tuple) else int(size)


def _pat_ray(model, x, dense_flops) -> int:
    """pat_ray's prune (whole heads); returns how many groups of heads lost some."""
    import pat_ray

    arch = pat_ray.prune(model, x, criterion="magnitude", budget=BUDGET)
    return sum(1 for name, kept in arch.kept.items() if name.endswith("/heads") and len(kept) < arch.sizes[name])


QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))  # transformers 4 / 5 attentions


def _attentions(model) -> list[tuple[object, tuple]]:
    """Each attention module with a head count, and its query, key and value Linears."""
    found = []
    for module in model.modules():
        for names in QKV_NAMES:
            if hasattr(module, "num_attention_heads") and all(hasattr(module, n) for n in names):
                found.append((module, tuple(getattr(module, n) for n in names)))
    return found


def _torch_pruning(model, x, dense_flops) -> None:
    """Torch-Pruning as its Hugging Face ViT example drives it: query, key and value with their
    head count, the head attributes set again after each step, the classifier left alone."""
    attentions = _attentions(model)
    heads = {linear: module.num_attention_heads for module, qkv in attentions for linear in qkv}
    classes = model.model.config.num_labels  # the classifier (whatever its name) is left alone
    classifier = [m for m in model.modules() if getattr(m, "out_features", getattr(m, "out_channels", 0)) == classes]

    def after_step(pruner) -> None:
        for module, (query, _, _) in attentions:  # the forward reads these
            module.num_attention_heads = pruner.num_heads[query]
            for size in ("head_dim", "attention_head_size"):
                if hasattr(module, size):
                    setattr(module, size, query.out_features // module.num_attention_heads)
            if hasattr(module, "all_head_size"):
                module.all_head_size = query.out_features

    step_torch_pruning(model, x, dense_flops, heads, classifier, after_step)


LIBRARIES = {"pat_ray": _pat_ray, "torch_pruning": _torch_pruning}
TITLES = {"pat_ray": "pat_ray", "torch_pruning": "Torch-Pruning"}


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    main(
        __file__,
        "model types",
        lambda: {t: t for t in (*architectures(), *(f"text:{t}" for t in TEXT))},
        _build,
        LIBRARIES,
        TITLES,
        (
            "hf_coverage.md",
            f"Hugging Face coverage: every image classifier and six text classifiers pruned to {BUDGET:.0%} "
            "of their FLOPs",
            f"transformers {_transformers_version()}; random weights, small configs (2 layers or one block per "
            "stage). FLOPs kept by torch's FlopCounterMode (attention included).",
        ),
    )
