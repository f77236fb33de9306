#include "core/runtime.h"

#include "common/client_text.h"
#include "common/precision.h"

#include <dlfcn.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef SPRITEDIFF_WITH_TCMALLOC
#include <gperftools/malloc_extension.h>
#endif
#include <torch/torch.h>
#ifdef SPRITEDIFF_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
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

std::string CpuBlasName() {
  if (at::globalContext().hasMKL()) return "MKL";
  // Debian's libtorch calls sgemm_ through libblas.so.3, an alternatives link: the file it
  // resolves to names the implementation (libtorch also links OpenBLAS directly for other
  // routines, so OpenBLAS's own symbols prove nothing).
  Dl_info info{};
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  if (sgemm == nullptr || dladdr(sgemm, &info) == 0 || info.dli_fname == nullptr) return "unknown";
  std::error_code ec;
  const std::string file = std::filesystem::canonical(info.dli_fname, ec).string();
  for (const char* name : {"openblas", "blis", "mkl", "atlas"}) {
    if (file.find(name) != std::string::npos) return name == std::string("openblas") ? "OpenBLAS" : name;
  }
  // Debian's netlib reference BLAS lives in .../blas/libblas.so.3.
  if (file.find("/blas/libblas.so") != std::string::npos) return "reference";
  return "other";
}

std::string HeapAllocatorName() {
#ifdef SPRITEDIFF_WITH_TCMALLOC
  // Linked in, tcmalloc serves malloc unless a preloaded allocator comes first; then its own
  // count of bytes in use stays near zero however much this process has allocated.
  size_t in_use = 0;
  if (MallocExtension::instance()->GetNumericProperty("generic.current_allocated_bytes", &in_use) &&
      in_use >= (1u << 20)) {
    return "tcmalloc";
  }
#endif
  return "glibc";
}

void ReleaseFreeHeapMemory() {
#ifdef SPRITEDIFF_WITH_TCMALLOC
  if (HeapAllocatorName() == "tcmalloc") {
    MallocExtension::instance()->ReleaseFreeMemory();
    return;
  }
#endif
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

std::string SlowBlasWarning(const std::string& device) {
  if (device != "cpu" || CpuBlasName() != "reference") return "";
  return "libtorch uses the reference BLAS (2-8x slower); install libopenblas0-openmp (scripts/install-deps.sh does)";
}

void SetThreadIntraOpThreads(int threads) {
  threads = std::max(1, threads);
  // libtorch sets each thread's OpenMP count from the process-wide value the first time that
  // thread calls into its parallel code; make that happen now, inside libtorch (a header
  // inline such as at::parallel_for compiled into this binary has its own once-per-thread flag
  // and would leave libtorch's to fire later, overwriting the count set below).
  (void)at::get_num_threads();
  // at::set_num_threads would also resize process-wide pools (the pthreadpool that NNPACK's
  // convolutions use, oneDNN's caches), so a one-thread training worker would slow every
  // sampling thread down. OpenMP's own count is per thread: set only that. The symbol is
  // looked up at run time because CUDA builds of libtorch ship their OpenMP runtime under
  // another file name.
  using SetFn = void (*)(int);
  static const auto omp_set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  // MKL (CUDA builds of libtorch) keeps a per-thread count of its own that outranks OpenMP's.
  // Its C entry point is MKL_Set_Num_Threads_Local (mkl_service.h defines the lowercase name
  // to it); the lowercase symbol is the Fortran interface, which takes a pointer: called with
  // an int, it crashed the daemon's scheduler thread on PyTorch 2.11's libtorch (2026-11-26).
  using MklSetFn = int (*)(int);
  static const auto mkl_set_local = reinterpret_cast<MklSetFn>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  if (omp_set != nullptr) omp_set(threads);
  if (mkl_set_local != nullptr) mkl_set_local(threads);
  const bool mkl_unset = at::globalContext().hasMKL() && mkl_set_local == nullptr;
  if (omp_set == nullptr || at::get_num_threads() != threads || mkl_unset) {
    at::set_num_threads(threads);  // not OpenMP, or not reachable: fall back to the process-wide setting
  }
}

bool CpuHasNativeBFloat16() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream flags(line.substr(line.find(':') + 1));
    std::string flag;
    while (flags >> flag) {
      if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
    }
    return false;  // every core lists the same flags
  }
  return false;
}

Result<bool> ResolveBFloat16(const std::string& precision, const std::string& device) {
  if (precision == "fp32") return false;
  if (precision == "bf16") return true;
  if (precision == "auto") return device == "cpu" && CpuHasNativeBFloat16();
  return Status::InvalidArgument("precision must be " + PrecisionNamesText() + ", got '" + Echo(precision, 32) + "'");
}

Result<bool> ResolveFoldBatchNorm(const std::string& setting, const std::string& device) {
  if (setting == "true") return true;
  if (setting == "false") return false;
  if (setting == "auto") return device.rfind("cuda", 0) == 0;
  return Status::InvalidArgument("fold_batchnorm must be true, false or auto, got '" + Echo(setting, 32) + "'");
}

void WaitForDevice(const c10::Device& device) {
#ifdef SPRITEDIFF_WITH_CUDA
  // The current stream only: a device-wide sync is not allowed while another thread (another
  // model's scheduler) captures a CUDA graph on its own stream, and would spoil that capture.
  if (device.is_cuda()) c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
#else
  (void)device;  // a libtorch without CUDA has no asynchronous device
#endif
}

}  // namespace spritediff
