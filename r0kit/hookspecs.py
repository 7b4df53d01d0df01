"""Every pluggy hook r0kit calls, in one place.

Each spec is a typed no-op whose docstring is its documentation. Plugins
implement them with :data:`r0kit.hookimpl`; they receive a ``register``
callable and never touch a registry directly.

Hooks are called with keyword arguments only, and an implementation may
accept fewer arguments than its spec (pluggy's rule), which is how a spec
grows without breaking plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from r0kit.images import RewardContract

hookspec = pluggy.HookspecMarker("r0kit")
hookimpl = pluggy.HookimplMarker("r0kit")


class RegisterReward(Protocol):
    def __call__(
        self, name: str, factory, *, contract: RewardContract, description: str = ""
    ) -> None: ...


class RegisterComponent(Protocol):
    def __call__(self, name: str, factory, *, description: str = "") -> None: ...


# --------------------------------------------------------------------------
# Registration: called once, when the plugin manager is first built.
# --------------------------------------------------------------------------


@hookspec
def r0kit_register_rewards(register: RegisterReward) -> None:
    """Register reward factories.

    Call ``register(name, factory, contract=RewardContract(...), description=...)``
    once per reward. ``factory(**options)`` must return a callable
    ``reward(x, prompts) -> Tensor[B]`` where ``x`` is the image batch already
    preprocessed by the core to what ``contract`` declares. Options the
    factory does not accept are rejected before it is called, naming the option.

    :param register: the callback that records one reward; it raises
        :class:`r0kit.errors.PluginError` on a duplicate name or a
        non-callable factory.
    :returns: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def r0kit_register_regularizers(register: RegisterComponent) -> None:
    """Register regularizer factories.

    Call ``register(name, factory, description=...)``. ``factory(**options)``
    returns a callable ``reg(sample, generator) -> Tensor`` of shape ``[B]``
    (a per-sample penalty) or ``[]`` (one penalty shared by the batch, e.g. a
    penalty on weights). The objective subtracts it with its weight.

    :param register: the callback that records one regularizer.
    :returns: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def r0kit_register_generators(register: RegisterComponent) -> None:
    """Register generator parameterizations.

    Call ``register(name, factory, description=...)``. ``factory(**options)``
    returns an object that follows :class:`r0kit.generator.Generator`: it
    ``prepare``-s its per-problem state, exposes the tensors to optimize
    through ``parameters()``, and ``sample``-s an image batch in [0, 1] that
    is differentiable with respect to them.

    A generator that saves a trained copy of itself (``export(folder)``, called
    at the end of ``r0kit train``) says how such a folder is found and loaded
    again, so that ``r0kit evaluate FOLDER`` and the ``[evaluate]`` table can
    sample it: the factory's ``export_meta`` attribute names the file that
    marks an export folder (``"kstep.json"``), and its
    ``from_export(folder, **overrides)`` builds the frozen generator back;
    ``evaluate`` passes ``device`` and, with ``--size``, ``height`` and
    ``width`` as overrides.

    :param register: the callback that records one generator.
    :returns: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def r0kit_register_metrics(register: RegisterComponent) -> None:
    """Register evaluation metrics: numbers computed over a *set* of generated images.

    Call ``register(name, factory, description=...)``. ``factory(**options)``
    returns a callable ``metric(images, prompts) -> dict[str, float]`` where
    ``images`` is ``[N, 3, H, W]`` float in [0, 1] and ``prompts`` holds one
    prompt per image (images of the same prompt, drawn with different seeds,
    repeat it). The returned names become table columns (``"fid"``,
    ``"accuracy/colour"``, ...). Metrics judge; they are never optimized, so
    they need no gradient. ``r0kit evaluate --metric NAME`` computes them.

    A metric may declare what it needs as attributes, checked before any sampling
    (:func:`r0kit.evaluate.check_metric_needs`): ``min_images_per_prompt`` (a
    diversity across seeds: 2) and ``min_images`` (FID: 2), and a metric that
    judges only some prompts may define ``check_prompts(prompts)``, raising
    InputError for one it cannot judge (the mini world's judge reads its own
    grammar), and ``lower_is_better``, the output names where lower is better
    (FID's ``("fid",)``), for the table's best-of-column mark. The factory should
    check its option values itself and raise :class:`r0kit.OptionError`.

    :param register: the callback that records one metric.
    :returns: nothing; the return value is ignored.

    .. versionadded:: 0.2
    """
