#include "core/step_graphs.h"

#include <torch/version.h>

#include <algorithm>

#ifdef SPRITEDIFF_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace spritediff {

torch::Tensor GuidedEps(const torch::Tensor& eps_c, const torch::Tensor& eps_u, const torch::Tensor& w) {
  // lerp computes end - (end - start)(1 - w) for w >= 0.5, which is exactly eps_c at w = 1
  // (for finite predictions; a non-finite one spoils its row under either formula).
  return torch::lerp(eps_u, eps_c, w);
}

std::pair<torch::Tensor, torch::Tensor> StepUpdate(const torch::Tensor& x, const torch::Tensor& eps,
                                                   const torch::Tensor& coef, const torch::Tensor& prev_x0,
                                                   const torch::Tensor& noise, bool want_x0) {
  auto col = [&](StepCoef k) { return coef.select(1, k).view({-1, 1, 1, 1}); };
  // One kernel per term (multiply-adds into the first product), which is what a step at batch 1
  // on a GPU pays for, per kernel.
  torch::Tensor next = x * col(kCoefA);
  next.addcmul_(eps, col(kCoefB));
  if (prev_x0.defined()) next.addcmul_(prev_x0, col(kCoefC));
  if (noise.defined()) next.addcmul_(noise, col(kCoefSigma));
  torch::Tensor x0;
  if (want_x0) x0 = (x * col(kCoefX0Scale)).addcmul_(eps, col(kCoefX0Shift));
  return {next, x0};
}

std::pair<torch::Tensor, torch::Tensor> StepMath(ContextUnet& net, const torch::Tensor& x, const torch::Tensor& ctx,
                                                 const torch::Tensor& coef, const torch::Tensor& noise,
                                                 const torch::Tensor& prev_x0, bool guided) {
  const torch::Tensor t = coef.select(1, kCoefTime).contiguous();
  torch::Tensor eps;
  if (!guided) {
    eps = net->forward(x, t, ctx);
  } else {
    const int64_t b = x.size(0);
    const torch::Tensor out =
        net->forward(torch::cat({x, x}), torch::cat({t, t}), torch::cat({ctx, torch::zeros_like(ctx)}));
    eps = GuidedEps(out.slice(0, 0, b), out.slice(0, b), coef.select(1, kCoefGuidance).view({-1, 1, 1, 1}));
  }
  return StepUpdate(x, eps, coef, prev_x0, noise, /*want_x0=*/true);
}

struct StepGraphs::Graph {
#ifdef SPRITEDIFF_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  torch::Tensor next, x0;  // static outputs, rewritten by every replay
};

bool StepGraphs::CompiledWithCuda() {
#ifdef SPRITEDIFF_WITH_CUDA
  return true;
#else
  return false;
#endif
}

StepGraphs::StepGraphs(ContextUnet net, torch::Device device, int max_rows) : net_(std::move(net)), device_(device) {
  const int cap = std::clamp(max_rows, 1, 1024);
  while (max_bucket_ < cap) max_bucket_ *= 2;
  captures_ = CompiledWithCuda() && device_.is_cuda();
}

StepGraphs::~StepGraphs() = default;

int StepGraphs::BucketFor(int64_t n) const {
  if (n < 1 || n > max_bucket_) return 0;
  int b = 1;
  while (b < n) b *= 2;
  return b;
}

StepGraphs::Buffers& StepGraphs::BuffersFor(int bucket) {
  auto it = buffers_.find(bucket);
  if (it != buffers_.end()) return it->second;
  const ModelConfig& arch = net_->config();
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  Buffers buf;
  buf.x = torch::zeros({bucket, arch.in_channels, arch.height, arch.height}, opts);
  buf.ctx = torch::zeros({bucket, arch.n_cfeat}, opts);
  buf.coef = torch::zeros({bucket, kStepCoefs}, opts);
  buf.noise = torch::zeros_like(buf.x);
  buf.prev_x0 = torch::zeros_like(buf.x);
  return buffers_.emplace(bucket, std::move(buf)).first->second;
}

StepGraphs::Graph* StepGraphs::Capture(int bucket, bool guided, Buffers& buf) {
#ifdef SPRITEDIFF_WITH_CUDA
  auto g = std::make_unique<Graph>();
  try {
    c10::cuda::CUDAGuard device_guard(device_);
    torch::cuda::synchronize(device_.index());  // the buffers are written
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device_.index());
    {
      // Capture needs a stream other than the default one. Two eager runs on it first create the
      // cuDNN/cuBLAS handles and workspaces and warm the allocator, none of which may happen
      // inside a capture.
      c10::cuda::CUDAStreamGuard stream_guard(side);
      for (int i = 0; i < 2; ++i) StepMath(net_, buf.x, buf.ctx, buf.coef, buf.noise, buf.prev_x0, guided);
      side.synchronize();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)  // capture modes: 2.1+
      // Thread-local capture: other threads (other models, a training job) may use CUDA meanwhile.
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
#else
      g->graph.capture_begin();
#endif
      std::pair<torch::Tensor, torch::Tensor> out =
          StepMath(net_, buf.x, buf.ctx, buf.coef, buf.noise, buf.prev_x0, guided);
      g->graph.capture_end();
      g->next = out.first;
      g->x0 = out.second;
    }
    side.synchronize();
  } catch (const std::exception& e) {
    capture_error_ = std::string("capturing the step graph for ") + std::to_string(bucket) + " rows failed: " +
                     e.what();
    captures_ = false;
    return nullptr;
  }
  Graph* raw = g.get();
  graphs_.emplace(std::make_pair(bucket, guided), std::move(g));
  return raw;
#else
  (void)bucket;
  (void)guided;
  (void)buf;
  return nullptr;
#endif
}

bool StepGraphs::Run(const std::vector<torch::Tensor>& xs, const std::vector<torch::Tensor>& ctxs,
                     const torch::Tensor& coef, const torch::Tensor& noise, const torch::Tensor& prev_x0, bool guided,
                     torch::Tensor* next, torch::Tensor* x0) {
  const int64_t n = static_cast<int64_t>(xs.size());
  const int bucket = BucketFor(n);
  if (bucket == 0) return false;
  torch::NoGradGuard no_grad;
  Buffers& buf = BuffersFor(bucket);
  // Rows past n keep whatever an earlier step left there: finite values whose results are dropped.
  torch::Tensor x_rows = buf.x.narrow(0, 0, n), ctx_rows = buf.ctx.narrow(0, 0, n);
  torch::stack_out(x_rows, xs);
  torch::stack_out(ctx_rows, ctxs);
  buf.coef.narrow(0, 0, n).copy_(coef, /*non_blocking=*/true);
  // Optional inputs: undefined means zeros, which are written once, not every step.
  auto load_optional = [n](torch::Tensor& dst, bool& is_zero, const torch::Tensor& src) {
    if (src.defined()) {
      dst.narrow(0, 0, n).copy_(src, /*non_blocking=*/true);
      is_zero = false;
    } else if (!is_zero) {
      dst.zero_();
      is_zero = true;
    }
  };
  load_optional(buf.noise, buf.noise_zero, noise);
  load_optional(buf.prev_x0, buf.prev_x0_zero, prev_x0);
  torch::Tensor out_next, out_x0;
#ifdef SPRITEDIFF_WITH_CUDA
  if (captures_) {
    auto it = graphs_.find(std::make_pair(bucket, guided));
    Graph* g = it != graphs_.end() ? it->second.get() : Capture(bucket, guided, buf);
    if (g != nullptr) {
      g->graph.replay();
      out_next = g->next;
      out_x0 = g->x0;
    }
  }
#endif
  if (!out_next.defined()) {
    std::pair<torch::Tensor, torch::Tensor> out =
        StepMath(net_, buf.x, buf.ctx, buf.coef, buf.noise, buf.prev_x0, guided);
    out_next = out.first;
    out_x0 = out.second;
  }
  *next = out_next.narrow(0, 0, n).clone();
  if (x0 != nullptr) *x0 = out_x0.narrow(0, 0, n).clone();
  return true;
}

}  // namespace spritediff
