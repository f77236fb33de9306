// The denoising step as fixed-shape tensor arithmetic, and CUDA graphs of it per batch bucket.
//
// One step of DenoiseStep (core/sampler.h) is, for rows i = 1..n with per-row coefficients packed
// as the columns of coef (StepCoef):
//   eps_i = net(x_i, t_i, ctx_i)                                  unguided
//   eps_i = eps_u + w_i (eps_c - eps_u), eps_c = net(x_i, t_i, ctx_i), eps_u = net(x_i, t_i, 0)
//                                                                 guided (w_i != 1; w_i = 1 keeps eps_c)
//   x_s  = a x_t + b eps + c x0_prev + sigma z                    (the sampler's rule, sampler.h)
//   x0   = x0_scale x_t + x0_shift eps                            (the x0 prediction)
// StepMath computes this for every row of its inputs. Eager DenoiseStep runs it on the exact rows
// (forwarding only the guided rows' unconditional halves); StepGraphs runs it on static buffers of
// a bucket size (1, 2, 4, ... rows; the rows past n are padding whose results are dropped), and on
// a CUDA device captures it once per (bucket, guided) as a CUDA graph and replays it: one launch
// instead of a hundred small kernels, which is what a step at batch 1 costs on a GPU. A row's
// result does not depend on its neighbours (BatchNorm runs on its running statistics in eval mode,
// GroupNorm per row), so padding changes nothing but rounding of the batched kernels.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/model.h"

namespace spritediff {

// Columns of the per-row coefficient matrix [n, kStepCoefs] (float32).
enum StepCoef : int64_t {
  kCoefTime = 0,   // network time t/T
  kCoefGuidance,   // w; 1 = the conditional prediction alone
  kCoefA,
  kCoefB,
  kCoefC,
  kCoefSigma,
  kCoefX0Scale,
  kCoefX0Shift,
  kStepCoefs
};

// The guidance mix eps_u + w (eps_c - eps_u), exactly eps_c where w == 1. w: [n, 1, 1, 1].
torch::Tensor GuidedEps(const torch::Tensor& eps_c, const torch::Tensor& eps_u, const torch::Tensor& w);

// The update: {x_s, x0}. prev_x0 and noise may be undefined (their terms are then left out; a
// zero tensor gives the same values). x0 is undefined unless want_x0.
std::pair<torch::Tensor, torch::Tensor> StepUpdate(const torch::Tensor& x, const torch::Tensor& eps,
                                                   const torch::Tensor& coef, const torch::Tensor& prev_x0,
                                                   const torch::Tensor& noise, bool want_x0);

// The whole step for every row of x ([B, C, H, W]) with ctx [B, n_cfeat], coef [B, kStepCoefs],
// noise and prev_x0 shaped like x. guided: one forward of 2B rows (conditional, then
// unconditional) mixed by GuidedEps; else one forward of B rows. Returns {x_s, x0}.
std::pair<torch::Tensor, torch::Tensor> StepMath(ContextUnet& net, const torch::Tensor& x, const torch::Tensor& ctx,
                                                 const torch::Tensor& coef, const torch::Tensor& noise,
                                                 const torch::Tensor& prev_x0, bool guided);

// CUDA graphs of StepMath per (bucket, guided), captured on first use. One per model and device,
// used from one thread at a time (the model's scheduler thread or an offline command).
class StepGraphs {
 public:
  // max_rows: the most rows a step will hold; buckets are the powers of two up to the first one
  // >= max_rows (capped at 1024). On a CPU device, or with a libtorch without CUDA, Run computes
  // the bucketed step eagerly ("emulated": the same buffers and padding, no graph), which is how
  // the CPU tests check this path.
  StepGraphs(ContextUnet net, torch::Device device, int max_rows);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // True when this libtorch has CUDA (graphs can be captured on a CUDA device).
  static bool CompiledWithCuda();
  // True when Run replays captured graphs (CUDA build, CUDA device, no capture has failed).
  bool captures() const { return captures_; }
  // The bucket for n rows: the smallest power of two >= n, or 0 when n exceeds the largest.
  int BucketFor(int64_t n) const;
  int captured_graphs() const { return static_cast<int>(graphs_.size()); }
  // Why capturing stopped (empty while it works): the first capture failure; Run is eager since.
  const std::string& capture_error() const { return capture_error_; }

  // The step for n = xs.size() rows: xs[i] ([C, H, W]) and ctxs[i] ([n_cfeat]) are row i's
  // sample and context on the device; coef ([n, kStepCoefs]) and noise ([n, C, H, W]; undefined =
  // zeros) may be on the host, where they are copied without a sync when pinned; prev_x0 as
  // StepMath's (undefined = zeros). The rows go straight into the bucket's static buffers.
  // Returns false, leaving the outputs alone, when n has no bucket; the caller then runs the
  // eager step. Outputs are fresh tensors (not views of the static buffers); x0 may be null when
  // the caller needs no x0 prediction.
  bool Run(const std::vector<torch::Tensor>& xs, const std::vector<torch::Tensor>& ctxs, const torch::Tensor& coef,
           const torch::Tensor& noise, const torch::Tensor& prev_x0, bool guided, torch::Tensor* next,
           torch::Tensor* x0);

 private:
  struct Buffers {  // a bucket's static inputs, shared by its guided and unguided graphs
    torch::Tensor x, ctx, coef, noise, prev_x0;
    bool noise_zero = true, prev_x0_zero = true;
  };
  struct Graph;  // a captured graph and its static outputs (CUDA builds)

  Buffers& BuffersFor(int bucket);
  Graph* Capture(int bucket, bool guided, Buffers& buf);

  ContextUnet net_;
  torch::Device device_;
  int max_bucket_ = 1;
  bool captures_ = false;
  std::string capture_error_;
  std::map<int, Buffers> buffers_;
  std::map<std::pair<int, bool>, std::unique_ptr<Graph>> graphs_;
};

}  // namespace spritediff
