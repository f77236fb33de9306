// Set-to-set comparisons of feature vectors, as used to judge generated images against real
// ones: the Frechet distance between the Gaussians fitted to two sets (FID's formula, on any
// features), and the k-NN manifold precision/recall of Kynkaanniemi et al. (2019).
#pragma once

#include <torch/torch.h>

#include "common/status.h"

namespace spritediff {

// d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), with unbiased
// covariances, computed in double. Both square roots come from eigendecompositions of
// symmetric matrices (eigenvalues below 0 from rounding are clamped), so it is stable for the
// rank-deficient covariances of small sets. a: [N, D], b: [M, D], N, M >= 2.
Result<double> FrechetDistance(const torch::Tensor& a, const torch::Tensor& b);

// The k-NN manifold estimate: each real point owns a ball whose radius is the distance to its
// k-th nearest other real point; precision is the fraction of generated points inside at
// least one real ball, recall the fraction of real points inside at least one generated ball
// (radii from the generated set). Euclidean distances in double. Both sets need > k points.
struct PrecisionRecall {
  double precision = 0;
  double recall = 0;
};
Result<PrecisionRecall> ManifoldPrecisionRecall(const torch::Tensor& real, const torch::Tensor& generated, int k = 3);

}  // namespace spritediff
