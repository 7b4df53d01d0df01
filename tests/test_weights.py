"""Weight resolution (path > HF cache > download) and safe checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from r0kit.errors import WeightsError
from r0kit.weights import load_state_dict, resolve_file, resolve_repo


def _fake_cache(root, repo_id, filename, payload=b"weights"):
    """Lay out a Hugging Face hub cache entry the way huggingface_hub writes it."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(payload)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap / filename


def test_explicit_path_wins(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    assert resolve_file("org/repo", "model.pt", path=f) == f
    assert resolve_file("org/repo", "model.pt", path=tmp_path) == f
    assert resolve_file(str(tmp_path), "model.pt") == f
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_file("org/repo", "model.pt", path=tmp_path / "other.pt")


def test_hf_cache_is_used_offline(tmp_path, monkeypatch):
    cached = _fake_cache(tmp_path, "org/repo", "model.pt")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert resolve_file("org/repo", "model.pt").resolve() == cached.resolve()


def test_offline_miss_names_repo_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as exc:
        resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt", what="HPS v2.1 checkpoint")
    msg = str(exc.value)
    assert "xswu/HPSv2/HPS_v2.1_compressed.pt" in msg and "HF_HUB_OFFLINE" in msg
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in msg
    with pytest.raises(WeightsError, match="hf download stabilityai/sd-turbo"):
        resolve_repo("stabilityai/sd-turbo")
    with pytest.raises(WeightsError, match="local folder"):
        resolve_repo(str(tmp_path / "no" / "such" / "folder"))


def test_load_state_dict_safetensors_and_torch(tmp_path):
    sd = {"w": torch.arange(6.0).view(2, 3)}
    save_file(sd, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "a.pt")
    for name in ("a.safetensors", "a.pt"):
        torch.testing.assert_close(load_state_dict(tmp_path / name)["w"], sd["w"])


def test_corrupt_and_unsafe_checkpoints_are_refused(tmp_path):
    (tmp_path / "trunc.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match="trunc.safetensors.*corrupt"):
        load_state_dict(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="junk.pt"):
        load_state_dict(tmp_path / "junk.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="evil.pt"):
        load_state_dict(tmp_path / "evil.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")


# ---------------------------------------------------------------------------- diffusion pipelines
SD15_FILES = """
.gitattributes README.md model_index.json v1-inference.yaml
v1-5-pruned-emaonly.ckpt v1-5-pruned-emaonly.safetensors v1-5-pruned.ckpt v1-5-pruned.safetensors
feature_extractor/preprocessor_config.json
safety_checker/config.json safety_checker/model.fp16.safetensors safety_checker/model.safetensors
safety_checker/pytorch_model.bin safety_checker/pytorch_model.fp16.bin
scheduler/scheduler_config.json
text_encoder/config.json text_encoder/model.fp16.safetensors text_encoder/model.safetensors
text_encoder/pytorch_model.bin text_encoder/pytorch_model.fp16.bin
tokenizer/merges.txt tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json tokenizer/vocab.json
unet/config.json unet/diffusion_pytorch_model.bin unet/diffusion_pytorch_model.fp16.bin
unet/diffusion_pytorch_model.fp16.safetensors unet/diffusion_pytorch_model.non_ema.bin
unet/diffusion_pytorch_model.non_ema.safetensors unet/diffusion_pytorch_model.safetensors
vae/config.json vae/diffusion_pytorch_model.bin vae/diffusion_pytorch_model.fp16.bin
vae/diffusion_pytorch_model.fp16.safetensors vae/diffusion_pytorch_model.safetensors
""".split()
SD15_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
TOKENIZER = {f"tokenizer/{n}" for n in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")}
BASE = {"model_index.json", "scheduler/scheduler_config.json"}


class FakeHub:
    """A hub repository listing and a local cache, behind the hub calls huggingface_hub and diffusers make.

    ``fetched`` records, per download, the files that left the "hub".
    """

    def __init__(self, root, files, index):
        import json

        self.files, self.index_text = list(files), json.dumps(index)
        self.snapshot = root / "snapshot"
        self.fetched: list[set[str]] = []

    def _content(self, f):
        if f == "model_index.json":
            return self.index_text
        if f == "scheduler/scheduler_config.json":
            return '{"_class_name": "PNDMScheduler", "num_train_timesteps": 1000}'
        return ""  # weights and configs that load() cannot read: the test looks only at what was fetched

    def _put(self, names):
        for f in names:
            p = self.snapshot / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(self._content(f))

    def file(self, repo_id, filename, *a, local_files_only=False, **kw):
        from huggingface_hub.errors import LocalEntryNotFoundError

        p = self.snapshot / filename
        if not p.is_file():
            if local_files_only:
                raise LocalEntryNotFoundError(f"{filename} not cached")
            self._put([filename])
            self.fetched.append({filename})
        return str(p)

    def cached(self, repo_id, filename, *a, **kw):
        p = self.snapshot / filename
        return str(p) if p.is_file() else None

    def snapshot_download(self, repo_id, *a, allow_patterns=None, ignore_patterns=None, local_files_only=False, **kw):
        import fnmatch

        from huggingface_hub.errors import LocalEntryNotFoundError

        if local_files_only:
            if len(self.fetched) > 1:  # a snapshot beyond model_index.json is cached
                return str(self.snapshot)
            raise LocalEntryNotFoundError("not cached")
        pick = [f for f in self.files if (allow_patterns is None or any(fnmatch.fnmatch(f, p) for p in allow_patterns))
                and not any(fnmatch.fnmatch(f, p) for p in ignore_patterns or [])]
        new = {f for f in pick if not (self.snapshot / f).is_file()}
        self._put(pick)
        self.fetched.append(new)
        return str(self.snapshot)

    def tree(self, *a, **kw):
        from types import SimpleNamespace

        from huggingface_hub.errors import CachedRepoTreeNotFoundError

        if len(self.fetched) < 2:
            raise CachedRepoTreeNotFoundError("no cached tree")
        return [SimpleNamespace(path=f) for f in self.files]

    def info(self, *a, **kw):
        from types import SimpleNamespace

        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in self.files])


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    import huggingface_hub
    import diffusers.pipelines.pipeline_utils as pu

    def make(files=SD15_FILES, index=SD15_INDEX):
        hub = FakeHub(tmp_path, files, index)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.file)
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", hub.cached)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
        monkeypatch.setattr(pu, "hf_hub_download", hub.file)
        monkeypatch.setattr(pu, "snapshot_download", hub.snapshot_download)
        monkeypatch.setattr(pu, "model_info", hub.info)
        monkeypatch.setattr(pu, "get_cached_repo_tree", hub.tree, raising=False)
        monkeypatch.setattr(pu, "_resolve_revision", lambda name, **kw: kw.get("revision"), raising=False)
        return hub

    return make


def _fetch(components, **kw):
    from r0kit.diffusion import load

    with pytest.raises(WeightsError, match="cannot load component|scheduler"):  # the fake files hold no weights
        load("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu", components=components, **kw)


def test_sd15_fetches_only_the_components_loaded_safetensors_first(fake_hub, monkeypatch):
    hub = fake_hub()
    _fetch(("unet", "vae", "text"))
    got = set().union(*hub.fetched)
    assert got == BASE | TOKENIZER | {
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors",
    }
    # cached now: loading again fetches nothing, online or offline
    n = len(hub.fetched)
    _fetch(("unet", "vae", "text"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fetch(("unet", "vae", "text"))
    assert len(hub.fetched) == n


def test_vae_only_and_variant(fake_hub):
    hub = fake_hub()
    _fetch(("vae",), variant="fp16")
    assert set().union(*hub.fetched) == BASE | {"vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"}


def test_legacy_bin_weights_when_there_are_no_safetensors(fake_hub):
    files = [f for f in SD15_FILES if not f.endswith(".safetensors")]
    hub = fake_hub(files=files)
    _fetch(("vae",))
    assert set().union(*hub.fetched) == BASE | {"vae/config.json", "vae/diffusion_pytorch_model.bin"}


def test_a_pipeline_r0kit_does_not_sample_is_refused_before_any_weight_is_fetched(fake_hub):
    from r0kit.diffusion import load

    index = {"_class_name": "SanaSprintPipeline", "transformer": ["diffusers", "SanaTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderDC"], "text_encoder": ["transformers", "Gemma2Model"],
             "scheduler": ["diffusers", "SCMScheduler"]}
    hub = fake_hub(files=["model_index.json", "transformer/diffusion_pytorch_model.safetensors",
                          "text_encoder/model.safetensors"], index=index)
    with pytest.raises(WeightsError, match="has a SanaTransformer2DModel"):
        load("Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers", device="cpu")
    assert hub.fetched == [{"model_index.json"}]


SD3_INDEX = {
    "_class_name": "StableDiffusion3Pipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["diffusers", "SD3Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    **{f"text_encoder{s}": ["transformers", c] for s, c in (("", "CLIPTextModelWithProjection"),
                                                            ("_2", "CLIPTextModelWithProjection"), ("_3", "T5EncoderModel"))},
    **{f"tokenizer{s}": ["transformers", c] for s, c in (("", "CLIPTokenizer"), ("_2", "CLIPTokenizer"), ("_3", "T5TokenizerFast"))},
}
SD3_FILES = ["model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
             "transformer/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
             *(f"text_encoder{s}/{f}" for s in ("", "_2", "_3") for f in ("config.json", "model.safetensors")),
             *(f"tokenizer{s}/tokenizer_config.json" for s in ("", "_2", "_3"))]


@pytest.mark.parametrize("drop_t5", [False, True])
def test_sd3_fetches_its_t5_only_when_it_is_loaded(fake_hub, drop_t5):
    """T5-XXL is 9.5 GB of weights: drop_t5 neither fetches nor loads it."""
    from r0kit.diffusion import load

    hub = fake_hub(files=SD3_FILES, index=SD3_INDEX)
    with pytest.raises(WeightsError, match="scheduler|cannot load component"):  # the fake files hold no weights
        load("stabilityai/stable-diffusion-3-medium-diffusers", device="cpu", drop_t5=drop_t5)
    got = set().union(*hub.fetched)
    t5 = {f for f in SD3_FILES if f.startswith(("text_encoder_3/", "tokenizer_3/"))}
    assert {"transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"} <= got
    assert (got & t5 == set()) if drop_t5 else (t5 <= got)


def test_offline_with_nothing_cached_names_the_fix(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    from r0kit.weights import resolve_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE.*hf download stabilityai/sd-turbo"):
        resolve_pipeline("stabilityai/sd-turbo", components=["unet"])


@pytest.mark.parametrize("value", [42, True, None, "", "  ", ["a"]])
def test_a_weights_source_that_is_not_a_string_is_named_not_a_type_error(value):
    """-R hpsv2.checkpoint=42 (or checkpoint = true in a TOML) was 'expected str, bytes or os.PathLike object'."""
    from r0kit.errors import OptionError
    from r0kit.weights import check_source

    with pytest.raises(OptionError, match=r"the hpsv2 reward: checkpoint must be a local path, a hub id or a built-in short name"):
        check_source(value, "the hpsv2 reward", "checkpoint")


@pytest.mark.parametrize("name, options, key", [("hpsv2", {"checkpoint": True}, "checkpoint"), ("clip", {"model": 5}, "model")])
def test_rewards_refuse_a_weights_option_that_is_not_a_string(name, options, key):
    import r0kit
    from r0kit.errors import OptionError

    pytest.importorskip("open_clip")
    with pytest.raises(OptionError, match=f"{key} must be a local path"):
        r0kit.reward(name, **options)
