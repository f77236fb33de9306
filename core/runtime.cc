#include "core/runtime.h"

#include <torch/torch.h>

#include <regex>
#include <thread>

namespace spritediff {

Result<std::string> ResolveDevice(const std::string& requested) {
  const bool has_cuda = torch::cuda::is_available();
  if (requested == "auto") return std::string(has_cuda ? "cuda:0" : "cpu");
  if (requested == "cpu") return requested;
  std::smatch m;
  static const std::regex cuda_re("^cuda(?::([0-9]+))?$");
  if (std::regex_match(requested, m, cuda_re)) {
    if (!has_cuda) return Status::FailedPrecondition("device '" + requested + "': this build or machine has no CUDA");
    const int index = m[1].matched ? std::stoi(m[1].str()) : 0;
    const int count = static_cast<int>(torch::cuda::device_count());
    if (index >= count) {
      return Status::FailedPrecondition("device '" + requested + "': only " + std::to_string(count) + " GPU(s) present");
    }
    return "cuda:" + std::to_string(index);
  }
  return Status::InvalidArgument("device must be auto, cpu, cuda or cuda:N, got '" + requested + "'");
}

int ConfigureThreads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return at::get_num_threads();
}

void SetThreadIntraOpThreads(int threads) {
  at::parallel_for(0, 2, 1, [](int64_t, int64_t) {});  // runs this thread's lazy initialisation
  at::set_num_threads(std::max(1, threads));
}

}  // namespace spritediff
