"""make_optimizer: the update rules, schedules, clipping, freezing, group learning rates, decay."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from bcjax import optimizers
from configs import default


def _params():
    return {
        "backbone": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.25]]), "bias": jnp.array([0.1, -0.2])},
        "head": {"kernel": jnp.array([[1.0], [-0.5]]), "bias": jnp.array([0.3])},
    }


def _ones(params):
    return jax.tree.map(jnp.ones_like, params)


def _config(**fields):
    config = default.get_config().optimizer
    config.update(fields)
    return config


def _trajectory(config, steps, grad_fn=_ones, params=None, total_steps=100):
    """Params after each of `steps` updates (index 0: the initial params)."""
    params = _params() if params is None else params
    tx = optimizers.make_optimizer(config, total_steps)
    update = jax.jit(tx.update)  # one compilation is cheaper than eager steps through lax.cond
    state = tx.init(params)
    history = [params]
    for _ in range(steps):
        updates, state = update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def _delta(history, step, *path):
    """The update applied at `step` to the leaf at `path`."""
    after, before = history[step + 1], history[step]
    for key in path:
        after, before = after[key], before[key]
    return np.asarray(after - before)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _paper_rmsprop(w, lr, rho, eps, steps, eps_in_sqrt):
    v = np.zeros_like(w)
    for _ in range(steps):
        g = 2 * w
        v = rho * v + (1 - rho) * g**2
        w = w - lr * g / (np.sqrt(v + eps) if eps_in_sqrt else np.sqrt(v) + eps)
    return w


def test_rmsprop_eps_in_sqrt_reproduces_recipe_a_formula():
    w = np.array([1.0, -2.0, 0.5])
    params = {"head": {"w": jnp.asarray(w)}}
    fields = dict(name="rmsprop", learning_rate=0.01, decay=0.9, eps=0.1)
    squared = lambda p: jax.tree.map(lambda x: 2 * x, p)  # noqa: E731 (gradient of sum(w^2))
    paper = _paper_rmsprop(w, 0.01, 0.9, 0.1, 3, eps_in_sqrt=True)
    keras = _paper_rmsprop(w, 0.01, 0.9, 0.1, 3, eps_in_sqrt=False)
    ours = _trajectory(_config(**fields), 3, squared, params)[-1]["head"]["w"]
    np.testing.assert_allclose(ours, paper, rtol=1e-6)
    keras_style = _trajectory(_config(**fields, eps_in_sqrt=False), 3, squared, params)[-1]["head"]["w"]
    np.testing.assert_allclose(keras_style, keras, rtol=1e-6)
    assert np.abs(keras - paper).max() > 1e-3


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "lamb"])
def test_optimizers_update_every_parameter(name):
    before, after = _trajectory(_config(name=name, learning_rate=0.1, momentum=0.9), 2)[::2]
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        assert np.all(np.isfinite(y)) and not np.array_equal(x, y)


def test_sgd_step_is_minus_lr_times_gradient():
    history = _trajectory(_config(name="sgd", learning_rate=0.1), 1)
    np.testing.assert_allclose(_delta(history, 0, "head", "kernel"), -0.1, rtol=1e-6)


def test_kwargs_reach_the_optax_function():
    # TF1's RMSprop starts v at 1: the first step is far smaller than lr / sqrt(1 - rho).
    config = _config(name="rmsprop", learning_rate=0.1, kwargs={"initial_scale": 1.0})
    step = _delta(_trajectory(config, 1), 0, "head", "bias")
    np.testing.assert_allclose(step, -0.1 / np.sqrt(1.0 + 1e-7), rtol=1e-5)


@pytest.mark.parametrize("name", ["nope", "chain"])
def test_unknown_optimizer_name(name):
    with pytest.raises(ValueError, match=r"any optax optimizer function .* optax\.<name>"):
        optimizers.make_optimizer(_config(name=name), 10)


@pytest.mark.parametrize(
    "fields, expected",
    [
        (dict(schedule="constant"), {0: 1.0, 50: 1.0, 100: 1.0}),
        (dict(schedule="cosine", end_learning_rate_factor=0.1), {0: 1.0, 50: 0.55, 100: 0.1}),
        (dict(schedule="warmup_constant", warmup_steps=10), {0: 0.0, 5: 0.5, 10: 1.0, 60: 1.0}),
        (
            dict(schedule="warmup_cosine", warmup_steps=10, end_learning_rate_factor=0.1),
            {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1},
        ),
        (dict(schedule="step", decay_steps=10, decay_rate=0.5), {0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25}),
    ],
)
def test_schedule_values(fields, expected):
    config = _config(learning_rate=2.0, **fields)
    got = {step: optimizers.learning_rate_at(config, 100, step) for step in expected}
    np.testing.assert_allclose(list(got.values()), [2.0 * v for v in expected.values()], rtol=1e-5)


@pytest.mark.parametrize("schedule, warmup", [("cosine", 0), ("warmup_cosine", 3)])
def test_one_compiled_update_serves_runs_of_any_length(schedule, warmup):
    """The run's length is an input of the step (recipe B's folds share one program); its updates
    are those of the optimizer built for that length, whose schedule is optax's own."""
    config = _config(
        name="sgd", learning_rate=1.0, schedule=schedule, warmup_steps=warmup, end_learning_rate_factor=0.1
    )
    params, grads = _params(), _ones(_params())
    traces = []

    def update(state, total_steps):
        traces.append(total_steps)
        return optimizers.make_optimizer(config, total_steps).update(grads, state, params)[0]

    compiled = jax.jit(update)
    reference = {
        "cosine": lambda total: optax.cosine_decay_schedule(1.0, total, alpha=0.1),
        "warmup_cosine": lambda total: optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total, end_value=0.1),
    }[schedule]
    for total in (10, 17):
        tx = optimizers.make_optimizer(config, total)
        state = tx.init(params)
        for step in range(total + 2):
            expected = tx.update(grads, state, params)[0]
            got = compiled(state, np.int32(total))  # compiled: cos may differ from the eager one in the last bit
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), got, expected)
            np.testing.assert_allclose(-expected["head"]["bias"][0], reference(total)(step), rtol=1e-6)
            state = tx.update(grads, state, params)[1]
    assert len(traces) == 1


def test_the_optimizer_follows_the_schedule():
    config = _config(name="sgd", learning_rate=1.0, schedule="warmup_constant", warmup_steps=4)
    history = _trajectory(config, 3)
    steps = [_delta(history, i, "head", "bias")[0] for i in range(3)]
    np.testing.assert_allclose(steps, [0.0, -0.25, -0.5], atol=1e-7)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(schedule="cosine", warmup_steps=5), "does not warm up"),
        (dict(schedule="linear"), "unknown config.optimizer.schedule"),
        (dict(schedule="step"), "decay_steps > 0"),
        (dict(weight_decay=1e-4, weight_decay_mask="biases"), "weight_decay_mask"),
    ],
)
def test_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        optimizers.make_optimizer(_config(**fields), 100)


def test_clipping_caps_the_global_norm():
    big = lambda p: jax.tree.map(lambda x: 10 * jnp.ones_like(x), p)  # noqa: E731
    history = _trajectory(_config(name="sgd", learning_rate=1.0, grad_clip_norm=1.0), 1, big)
    update = jax.tree.map(lambda a, b: a - b, history[1], history[0])
    np.testing.assert_allclose(optax.tree.norm(update), 1.0, rtol=1e-5)


def test_clipping_ignores_the_frozen_backbone():
    def grads(p):
        return {
            "backbone": jax.tree.map(lambda x: 1e3 * jnp.ones_like(x), p["backbone"]),
            "head": jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), p["head"]),
        }

    config = _config(name="sgd", learning_rate=1.0, grad_clip_norm=1.0, freeze_backbone_steps=1)
    history = _trajectory(config, 2, grads)
    np.testing.assert_allclose(_delta(history, 0, "head", "bias"), -0.1, rtol=1e-6)
    assert np.abs(_delta(history, 1, "head", "bias")).max() < 1e-3


def test_freeze_backbone_is_bit_exact_then_trains():
    history = _trajectory(_config(name="adam", learning_rate=0.1, weight_decay=0.1, freeze_backbone_steps=3), 5)
    for step in range(1, 4):
        assert _same(history[step]["backbone"], history[0]["backbone"])
    assert not _same(history[4]["backbone"], history[3]["backbone"])
    for step in range(5):
        assert not _same(history[step + 1]["head"], history[step]["head"])


def test_backbone_frozen_for_the_whole_run_has_no_optimizer_state():
    config = _config(name="adam", learning_rate=0.1, weight_decay=0.1, freeze_backbone_steps=-1)
    history = _trajectory(config, 4)
    assert all(_same(h["backbone"], history[0]["backbone"]) for h in history)
    assert not _same(history[4]["head"], history[0]["head"])
    params = {"backbone": {"kernel": jnp.ones((3, 3))}, "head": {"bias": jnp.ones(2)}}
    moments = [x for x in jax.tree.leaves(optimizers.make_optimizer(config, 10).init(params)) if x.size > 1]
    assert [x.shape for x in moments] == [(2,), (2,)]  # Adam's mu and nu of the head alone
    assert optimizers.frozen_at(config, 10**6) and optimizers.learning_rate_at(config, 100, 99, "backbone") == 0.0


def test_unfrozen_backbone_starts_with_fresh_state_on_the_global_schedule():
    # RMSprop's first step is lr/sqrt(1 - rho): any moment accumulated while frozen would shrink it.
    fresh = _trajectory(_config(name="rmsprop", learning_rate=0.1), 1)
    frozen = _trajectory(_config(name="rmsprop", learning_rate=0.1, freeze_backbone_steps=3), 4)
    np.testing.assert_allclose(_delta(frozen, 3, "backbone", "kernel"), _delta(fresh, 0, "backbone", "kernel"))
    # The step schedule has halved by step 2, when the backbone starts.
    config = _config(
        name="sgd", learning_rate=1.0, schedule="step", decay_steps=2, decay_rate=0.5, freeze_backbone_steps=2
    )
    np.testing.assert_allclose(_delta(_trajectory(config, 3), 2, "backbone", "bias"), -0.5)
    assert optimizers.learning_rate_at(config, 100, 1, "backbone") == 0.0
    assert optimizers.learning_rate_at(config, 100, 2, "backbone") == 0.5


def test_group_learning_rate_multipliers():
    history = _trajectory(_config(name="adam", learning_rate=0.1, head_lr_multiplier=0.0), 3)
    assert _same(history[3]["head"], history[0]["head"])
    config = _config(name="sgd", learning_rate=0.1, backbone_lr_multiplier=0.1)
    history = _trajectory(config, 1)
    np.testing.assert_allclose(_delta(history, 0, "head", "bias"), -0.1, rtol=1e-6)
    np.testing.assert_allclose(_delta(history, 0, "backbone", "bias"), -0.01, rtol=1e-6)
    assert optimizers.learning_rate_at(config, 100, 0, "backbone") == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_mask_leaves_biases_alone(name):
    zeros = lambda p: jax.tree.map(jnp.zeros_like, p)  # noqa: E731 (only the decay moves params)
    kernels = _trajectory(_config(name=name, learning_rate=0.1, weight_decay=0.5), 1, zeros)
    assert _same(kernels[1]["backbone"]["bias"], kernels[0]["backbone"]["bias"])
    assert not _same(kernels[1]["backbone"]["kernel"], kernels[0]["backbone"]["kernel"])
    everything = _trajectory(_config(name=name, learning_rate=0.1, weight_decay=0.5, weight_decay_mask="all"), 1, zeros)
    assert not _same(everything[1]["head"]["bias"], everything[0]["head"]["bias"])


def test_weight_decay_outside_adamw_is_l2_on_the_gradient():
    config = _config(name="sgd", learning_rate=0.1, weight_decay=0.5, weight_decay_mask="all")
    history = _trajectory(config, 1)
    bias = history[0]["head"]["bias"]
    np.testing.assert_allclose(_delta(history, 0, "head", "bias"), -0.1 * (1 + 0.5 * bias), rtol=1e-6)


def test_param_labels_and_unknown_groups():
    labels = optimizers.param_labels(_params())
    assert labels["backbone"]["kernel"] == "backbone" and labels["head"]["bias"] == "head"
    with pytest.raises(ValueError, match="'neck'"):
        optimizers.param_labels({"neck": {"w": jnp.zeros(2)}})


def test_defaults_come_from_the_config_file_only():
    """No second set of defaults fills a partial config: configs/default.py is the one source."""
    np.testing.assert_allclose(_delta(_trajectory(_config(name="sgd", learning_rate=0.5), 1), 0, "head", "bias"), -0.5)
    partial = ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.5})
    with pytest.raises(AttributeError, match="grad_clip_norm"):
        optimizers.make_optimizer(partial, 10)


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.backbone = nnx.Sequential(
            nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        )
        self.head = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(self.backbone(x))


def test_nnx_state_under_jit():
    graphdef, params, rest = nnx.split(_Tiny(nnx.Rngs(0)), nnx.Param, ...)
    config = _config(
        name="adamw",
        learning_rate=0.01,
        weight_decay=0.1,
        grad_clip_norm=1.0,
        freeze_backbone_steps=1,
        backbone_lr_multiplier=0.1,
    )
    tx = optimizers.make_optimizer(config, 10)
    x = jnp.ones((2, 3))

    @jax.jit
    def train_step(params, opt_state):
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(x) ** 2)  # noqa: E731
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    labels = optimizers.param_labels(params)
    assert set(jax.tree.leaves(labels)) == {"backbone", "head"}
    first, state = train_step(params, tx.init(params))
    second, _ = train_step(first, state)
    assert _same(first["backbone"], params["backbone"])
    assert not _same(first["head"], params["head"])
    assert not _same(second["backbone"], first["backbone"])
