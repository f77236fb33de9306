#include "core/sample_metrics.h"


#include <algorithm>
#include <string>

namespace spritediff {

namespace {

Status CheckSet(const torch::Tensor& t, const char* name, int64_t min_rows) {
  if (!t.defined() || t.dim() != 2) return Status::InvalidArgument(std::string(name) + " must be a [N, D] matrix");
  if (t.size(0) < min_rows) {
    return Status::InvalidArgument(std::string(name) + " needs at least " + std::to_string(min_rows) + " rows, got " +
                                   std::to_string(t.size(0)));
  }
  return Status::Ok();
}

torch::Tensor Covariance(const torch::Tensor& x, const torch::Tensor& mean) {
  const torch::Tensor centred = x - mean;
  return centred.t().matmul(centred) / static_cast<double>(x.size(0) - 1);
}

// The symmetric positive semi-definite square root's eigenvalues, clamped at 0.
torch::Tensor PsdEigenvalues(const torch::Tensor& m) {
  return at::linalg_eigvalsh(0.5 * (m + m.t()), "L").clamp_min(0.0);
}

}  // namespace

Result<double> FrechetDistance(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  Status s = CheckSet(a_in, "first feature set", 2);
  if (!s.ok()) return s;
  s = CheckSet(b_in, "second feature set", 2);
  if (!s.ok()) return s;
  if (a_in.size(1) != b_in.size(1)) return Status::InvalidArgument("feature sets differ in dimension");
  torch::NoGradGuard no_grad;
  const torch::Tensor a = a_in.to(torch::kFloat64), b = b_in.to(torch::kFloat64);
  const torch::Tensor mu_a = a.mean(0), mu_b = b.mean(0);
  const torch::Tensor cov_a = Covariance(a, mu_a), cov_b = Covariance(b, mu_b);
  auto [evals, evecs] = at::linalg_eigh(0.5 * (cov_a + cov_a.t()), "L");
  const torch::Tensor sqrt_a = evecs.matmul(torch::diag(evals.clamp_min(0.0).sqrt())).matmul(evecs.t());
  const torch::Tensor cross = sqrt_a.matmul(cov_b).matmul(sqrt_a);
  const double trace_sqrt = PsdEigenvalues(cross).sqrt().sum().item<double>();
  const double mean_term = (mu_a - mu_b).pow(2).sum().item<double>();
  const double d = mean_term + cov_a.trace().item<double>() + cov_b.trace().item<double>() - 2.0 * trace_sqrt;
  return std::max(0.0, d);
}

Result<PrecisionRecall> ManifoldPrecisionRecall(const torch::Tensor& real_in, const torch::Tensor& gen_in, int k) {
  if (k < 1) return Status::InvalidArgument("k must be >= 1");
  Status s = CheckSet(real_in, "real feature set", k + 1);
  if (!s.ok()) return s;
  s = CheckSet(gen_in, "generated feature set", k + 1);
  if (!s.ok()) return s;
  if (real_in.size(1) != gen_in.size(1)) return Status::InvalidArgument("feature sets differ in dimension");
  torch::NoGradGuard no_grad;
  const torch::Tensor real = real_in.to(torch::kFloat64), gen = gen_in.to(torch::kFloat64);
  // Row i's k-th nearest other point: sorted column 0 is the point itself (distance 0).
  auto radii = [k](const torch::Tensor& x) { return std::get<0>(torch::cdist(x, x).sort(1)).select(1, k); };
  const torch::Tensor real_radii = radii(real), gen_radii = radii(gen);
  const torch::Tensor gen_to_real = torch::cdist(gen, real);  // [G, R]
  PrecisionRecall pr;
  pr.precision = (gen_to_real <= real_radii.unsqueeze(0)).any(1).to(torch::kFloat64).mean().item<double>();
  pr.recall = (gen_to_real.t() <= gen_radii.unsqueeze(0)).any(1).to(torch::kFloat64).mean().item<double>();
  return pr;
}

}  // namespace spritediff
