"""A dilated causal 1D stack (WaveNet-style) forecasting a synthetic signal.

Every layer uses `padding="CAUSAL"`, so output `t` depends only on inputs `<= t`.
The script trains the stack to predict the next sample, then shows that no future
sample leaks: the Jacobian of every output with respect to later inputs is exactly
zero, and changing the future leaves the past outputs bit-for-bit unchanged.

Run: `python examples/causal_tcn.py`
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm import tqdm

import eqxconv


LENGTH = 256


def make_signals(key: PRNGKeyArray, count: int) -> Float[Array, "count 1 length"]:
    """Sums of two sines with random frequencies and phases, plus a little noise."""
    freq_key, phase_key, noise_key = jr.split(key, 3)
    t = jnp.arange(LENGTH + 1, dtype=jnp.float32)
    freqs = jr.uniform(freq_key, (count, 2, 1), minval=0.02, maxval=0.2)
    phases = jr.uniform(phase_key, (count, 2, 1), maxval=2 * jnp.pi)
    signal = jnp.sin(freqs * t + phases).sum(axis=1, keepdims=True)
    return signal + 0.05 * jr.normal(noise_key, signal.shape)


class TCN(eqx.Module):
    layers: tuple[eqxconv.Conv1d, ...]
    readout: eqxconv.Conv1d

    def __init__(self, key: PRNGKeyArray, width: int = 16):
        keys = jr.split(key, 6)
        dilations = (1, 2, 4, 8, 16)
        self.layers = tuple(
            eqxconv.Conv1d(
                1 if i == 0 else width, width, 3, dilation=d, padding="CAUSAL", key=k
            )
            for i, (d, k) in enumerate(zip(dilations, keys[:5], strict=True))
        )
        self.readout = eqxconv.Conv1d(width, 1, 1, key=keys[5])

    def __call__(self, x: Float[Array, "1 length"]) -> Float[Array, "1 length"]:
        for i, layer in enumerate(self.layers):
            y = jax.nn.tanh(layer(x))
            x = y if i == 0 else x + y  # residual
        return self.readout(x)


def main(steps: int = 400, seed: int = 0) -> None:
    data_key, model_key, test_key = jr.split(jr.key(seed), 3)
    signals = make_signals(data_key, 256)
    inputs, targets = signals[..., :-1], signals[..., 1:]  # predict the next sample
    model = TCN(model_key)
    optimiser = optax.adam(3e-3)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(model, x, y):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    @eqx.filter_jit
    def step(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    # Jitted: op by op, each evaluation would take seconds.
    evaluate = eqx.filter_jit(loss_fn)
    first = float(evaluate(model, inputs[:32], targets[:32]))
    progress = tqdm(range(steps), desc="training", unit="step")
    for i in progress:
        batch = slice((i * 32) % 224, (i * 32) % 224 + 32)
        model, state, loss = step(model, state, inputs[batch], targets[batch])
        if i % 10 == 0:  # float() waits for the step: not on every one
            progress.set_postfix(mse=f"{float(loss):.4f}")
    # The checks below take seconds too (a 256 x 256 Jacobian among them).
    checks = tqdm(total=2, desc="checking", unit="check")
    test = make_signals(test_key, 64)
    test_mse = float(evaluate(model, test[..., :-1], test[..., 1:]))
    checks.update()
    tqdm.write(f"test mse {test_mse:.4f} (untrained: {first:.4f})")
    assert test_mse < 0.1 * first, "the forecaster did not learn"

    # No leak: d output[t] / d input[s] == 0 for every s > t.
    x = test[0, :, :-1]
    jacobian = eqx.filter_jit(jax.jacobian(lambda x: model(x)[0]))(x)[:, 0, :]  # (t, s)
    future = np.triu(np.ones((LENGTH, LENGTH), bool), k=1)
    assert np.all(np.asarray(jacobian)[future] == 0), "a future sample leaked"
    # Changing the future never changes the past.
    cut = LENGTH // 2
    changed = x.at[:, cut:].set(jr.normal(test_key, (1, LENGTH - cut)))
    same = np.asarray(model(x))[:, :cut] == np.asarray(model(changed))[:, :cut]
    assert same.all(), "changing the future changed a past output"
    checks.update()
    checks.close()
    receptive = 1 + 2 * sum((1, 2, 4, 8, 16))
    print(f"no leak: outputs depend only on the past {receptive} samples")


if __name__ == "__main__":
    main()
