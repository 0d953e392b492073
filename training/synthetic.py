"""The FedProx Synthetic(alpha, beta) generator (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020), the standard naturally non-IID federated benchmark.

User k draws its own model and its own input distribution:
    u_k ~ N(0, alpha),  W_k ~ N(u_k, 1) (60x10),  b_k ~ N(u_k, 1) (10)
    B_k ~ N(0, beta),   v_k ~ N(B_k, 1) (60),     x ~ N(v_k, Sigma), Sigma = diag(j^-1.2)
    y = argmax softmax(x W_k + b_k)
alpha controls how much the users' models differ, beta how much their inputs differ. As in the
reference code, the second argument of N(., .) is used as a standard deviation.
"""

import numpy as np

NUM_FEATURES = 60
NUM_CLASSES = 10
# Stream tag mixed into every user's seed, so synthetic users never share a stream with other
# uses of the same task seed (splits, partitions).
_STREAM = 0x5EED_517


def generate_user(
    user: int, seed: int, n_samples: int, alpha: float = 0.5, beta: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """User `user`'s data: X (n_samples, 60) float32 and y (n_samples,) int64.

    Each user has its own random stream derived from (seed, user), so user k's data is the same
    whatever the number of users, and every node can regenerate any user's data locally.
    """
    rng = np.random.default_rng([seed, _STREAM, user])
    u = rng.normal(0.0, alpha)
    weights = rng.normal(u, 1.0, (NUM_FEATURES, NUM_CLASSES))
    bias = rng.normal(u, 1.0, NUM_CLASSES)
    input_mean = rng.normal(rng.normal(0.0, beta), 1.0, NUM_FEATURES)
    # Sigma is diagonal, so sampling is a per-feature scale: no need for multivariate_normal.
    std = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** (-1.2 / 2)
    x = input_mean + std * rng.standard_normal((n_samples, NUM_FEATURES))
    # argmax of softmax(z) is argmax of z: the softmax is monotone, so it is skipped.
    y = np.argmax(x @ weights + bias, axis=1)
    return x.astype(np.float32), y.astype(np.int64)
