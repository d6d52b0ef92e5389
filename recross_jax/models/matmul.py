"""The projection product of every dense layer: operands in the activation dtype, accumulated and
returned in float32, forward and backward; callers add biases and apply activations to the
float32 result and cast it to the activation dtype once.

Accumulating in float32 is the same maths on accelerators, and on CPU it is the form XLA runs on
the AMX / AVX512-BF16 units: a bfloat16 [4096, 384] x [384, 1536] product runs at 1,550 GFLOP/s
on a 2-core Sapphire Rapids this way and at 250 with a bfloat16 result. Autodiff would feed the
backward products a float32 cotangent against bfloat16 operands (a mixed product XLA computes in
float32); the custom gradient casts the cotangent to the activation dtype first, so the backward
products take the same fast form. In float32 it is the plain product and its plain gradient.

`rounded` ends the elementwise work after a product (BERT's bias and GELU) in one place, so
XLA's CPU compiler runs it as one pass instead of splitting it into the next product.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def matmul(x: Array, kernel: Array) -> Array:
    """x [..., in] @ kernel [in, out] (both of one dtype), accumulated and returned in float32."""
    return jnp.dot(x, kernel, preferred_element_type=jnp.float32)


def _forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return matmul(x, kernel), (x, kernel)


def _backward(residuals: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    grad_x = jnp.dot(grad, kernel.T, preferred_element_type=jnp.float32).astype(x.dtype)
    leading = tuple(range(x.ndim - 1))
    grad_kernel = jax.lax.dot_general(x, grad, ((leading, leading), ((), ())),
                                      preferred_element_type=jnp.float32)
    return grad_x, grad_kernel.astype(kernel.dtype)


matmul.defvjp(_forward, _backward)


def rounded(x: Array, dtype: jnp.dtype) -> Array:
    """float32 `x` rounded to `dtype`'s precision (to nearest even, as the cast to `dtype` does:
    the identity for float32), still float32; cast it to `dtype` after.

    The values are those of the plain cast, but the rounding is an op XLA's CPU compiler does not
    pull into a YNNPACK product fusion. Without it, the exact GELU between a BERT layer's two MLP
    products was split: the erfc into a loop fusion, the bias add materialised apart, and the
    multiplies, a float32 [tokens, 1536] broadcast of the constant 0.5 and the cast moved into the
    next product's fusion, which read three float32 [tokens, 1536] arrays. With it the activation
    is one loop fusion. On a 2-core Xeon, one bfloat16 MiniLM call of 64 x 64 tokens took 136-140
    instead of 167-170 ms (float32: 356-382 against 386-398), the same vectors bit for bit;
    `bench_embed.py --dtype bfloat16 --devices 1` ran 10% faster, with two devices 2-4%.
    """
    info = jnp.finfo(dtype)
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
