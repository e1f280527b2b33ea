"""crnet_jax: CRNet and the Multi-Consistency Mean Teacher in JAX/Flax."""
