"""models.matmul: float32-accumulated products whose gradient keeps the activation dtype."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from recross_jax.models.matmul import matmul, rounded


def operands(dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 16)).astype(dtype)
    kernel = jax.random.normal(jax.random.PRNGKey(1), (16, 8)).astype(dtype)
    weights = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 8))
    return x, kernel, weights


def loss(product, x, kernel, weights):
    return (product(x, kernel).astype(jnp.float32) * weights).sum()


def test_float32_value_and_gradient_are_the_plain_products():
    x, kernel, weights = operands(jnp.float32)
    np.testing.assert_array_equal(matmul(x, kernel), jnp.dot(x, kernel))
    ours = jax.grad(loss, argnums=(1, 2))(matmul, x, kernel, weights)
    plain = jax.grad(loss, argnums=(1, 2))(jnp.dot, x, kernel, weights)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bfloat16_products_stay_bfloat16_forward_and_backward():
    x, kernel, weights = operands(jnp.bfloat16)
    jaxpr = jax.make_jaxpr(jax.grad(lambda *a: loss(matmul, *a), argnums=(0, 1)))(x, kernel, weights)

    def dots(jaxpr):
        yield from (e for e in jaxpr.eqns if e.primitive.name == "dot_general")
        for sub in jax.extend.core.subjaxprs(jaxpr):
            yield from dots(sub)

    found = list(dots(jaxpr.jaxpr))
    assert len(found) == 3  # forward, and the gradients of x and of the kernel
    for equation in found:
        assert [v.aval.dtype for v in equation.invars] == [jnp.bfloat16] * 2
        assert equation.params["preferred_element_type"] == jnp.float32
    assert matmul(x, kernel).dtype == jnp.float32  # the accumulator, cast by the caller
    grads = jax.grad(loss, argnums=(1, 2))(matmul, x, kernel, weights)
    exact = jax.grad(loss, argnums=(1, 2))(jnp.dot, x.astype(jnp.float32),
                                           kernel.astype(jnp.float32), weights)
    for a, b in zip(grads, exact):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0.02, atol=0.1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_under_jit_and_vmap(dtype):
    x, kernel, _ = operands(dtype)
    stacked = jnp.stack([kernel, 2 * kernel])
    out = jax.jit(jax.vmap(matmul, in_axes=(None, 0)))(x, stacked)
    np.testing.assert_allclose(np.asarray(out[1], np.float32),
                               np.asarray(matmul(x, 2 * kernel), np.float32), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rounded_is_the_casts_rounding_kept_in_float32(dtype):
    # Values across bfloat16's range, ties included (1 + 2^-8 rounds to even: 1).
    x = jnp.concatenate([jax.random.normal(jax.random.PRNGKey(3), (4096,)) * 30,
                         jnp.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -0.0, 3e38, 1e-39])])
    out = jax.jit(rounded, static_argnums=1)(x, dtype)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x.astype(dtype).astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(out.astype(dtype)), np.asarray(x.astype(dtype)))
    if dtype == jnp.bfloat16:
        assert not np.array_equal(np.asarray(out), np.asarray(x))  # it does round
    grad = jax.grad(lambda v: (rounded(v, jnp.float32) * 2.0).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), 2.0)
