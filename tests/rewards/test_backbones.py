"""The shared backbone helpers, and plugins that import cheaply and name their extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from r0kit.backbones import PromptCache, enable_layer_checkpointing, resolve_device, resolve_dtype
from r0kit.errors import OptionError


def test_resolve_dtype_and_device():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    for bad in ("int8", torch.int64, 3):
        with pytest.raises(OptionError, match="float32, float16, bfloat16"):
            resolve_dtype(bad)
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(OptionError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="device='cpu'"):
            resolve_device("cuda")


def test_prompt_cache_encodes_each_prompt_once_and_evicts_oldest():
    calls = []

    def encode(ps):
        calls.append(list(ps))
        return torch.tensor([[float(len(p))] for p in ps])

    cache = PromptCache(max_size=2)
    out = cache.get(["aa", "b", "aa"], encode)
    # each alone: batched, a prompt's value would depend on the prompts missing with it (and a resume would drift)
    assert out.squeeze(1).tolist() == [2.0, 1.0, 2.0] and calls == [["aa"], ["b"]] and cache.misses == 2
    cache.get(["b"], encode)
    assert calls == [["aa"], ["b"]]
    cache.get(["ccc"], encode)  # evicts "aa", the least recently used
    assert "aa" not in cache and "b" in cache and len(cache) == 2
    with pytest.raises(OptionError, match="list of strings"):
        cache.get("not a list", encode)
    with pytest.raises(OptionError, match=r"must return a tensor \[1, \.\.\.\] for the one prompt, got \(2, 1\)"):
        cache.get(["dd"], lambda ps: torch.zeros(2, 1))  # an encode that ignores the one-prompt contract


def test_layer_checkpointing_same_gradients_and_state_dict():
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()) for _ in range(3)]).eval()
    x = torch.randn(4, 8, requires_grad=True)
    layers(x).sum().backward()
    ref, x.grad = x.grad.clone(), None
    keys = list(layers.state_dict())
    enable_layer_checkpointing(layers)
    enable_layer_checkpointing(layers)  # idempotent
    layers(x).sum().backward()
    torch.testing.assert_close(x.grad, ref)
    assert list(layers.state_dict()) == keys
    with torch.no_grad():
        assert layers(x).shape == (4, 8)


def test_plugins_import_without_heavy_packages_and_name_the_extra():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('open_clip', 'transformers'):
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        import r0kit_clip, r0kit_hpsv2, r0kit_imagereward, r0kit_pickscore, r0kit_aesthetic
        assert 'open_clip' not in sys.modules and 'transformers' not in sys.modules
        import r0kit
        from r0kit.backbones import MissingDependencyError
        for name, extra in [('clip', 'clip'), ('hpsv2', 'hps'), ('imagereward', 'imagereward'),
                            ('pickscore', 'pickscore'), ('aesthetic', 'aesthetic')]:
            try:
                r0kit.reward(name, device='cpu')
            except MissingDependencyError as exc:
                assert f"pip install 'r0kit[{extra}]'" in str(exc), str(exc)
            else:
                raise SystemExit('no error for ' + name)
        print('OK')
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("OK")
