// Process-wide compute settings: the device to run on and libtorch's thread pools.
// Debian's libtorch starts with one intra-op thread, so the count is always set explicitly.
#pragma once

#include <string>

#include "common/status.h"

namespace c10 {
struct Device;
}  // namespace c10

namespace spritediff {

// "auto" -> cuda:0 when libtorch has CUDA and a GPU is present, else "cpu";
// "cpu", "cuda", "cuda:N" are checked against what is available.
Result<std::string> ResolveDevice(const std::string& requested);

// threads <= 0 means every hardware thread. Returns the count in effect.
int ConfigureThreads(int threads);

// The BLAS libtorch calls on the CPU: "MKL" (built in), "OpenBLAS", "blis", "atlas",
// "reference" (Debian's netlib BLAS, the default without an optimised one: 2-8x slower here),
// "other" or "unknown".
std::string CpuBlasName();

// For a CPU device with the reference BLAS, the warning to log (what to install); else empty.
std::string SlowBlasWarning(const std::string& device);

// Gives the calling thread its own intra-op thread count, so a training thread and the serving
// threads of one process can use different counts. Only the thread's OpenMP count changes;
// the process-wide count and pools that at::set_num_threads would resize stay as
// ConfigureThreads left them. Each torch-using thread calls it once when it starts.
void SetThreadIntraOpThreads(int threads);

// The heap allocator in use: "tcmalloc" (gperftools' tcmalloc_minimal, linked into spritediffd
// unless CMake's SPRITEDIFF_TCMALLOC is off or the build is sanitized) or "glibc". Checked at
// run time: tcmalloc counts only when it is the one serving malloc.
std::string HeapAllocatorName();

// Blocks until the work this thread queued on a CUDA device (its current stream) has run; a
// no-op on the CPU, where every op has run when it returns. Steps are queued without host syncs
// (core/sampler.cc); whoever times a step waits here first.
void WaitForDevice(const c10::Device& device);
// Hands the allocator's free pages back to the system: tcmalloc's ReleaseFreeMemory, glibc's
// malloc_trim. The next allocations of that size fault fresh pages in again.
void ReleaseFreeHeapMemory();

// Inference precision (config `precision`, flag --precision): "fp32"; "bf16" (the network in
// bfloat16, ContextUnet::UseBFloat16ForInference); "auto" = bf16 on a CPU with native bf16
// dot products (AVX-512 BF16 or AMX, which oneDNN uses), fp32 elsewhere, CUDA included.
// Returns whether to use bf16; an unknown name is an error that names the field.
Result<bool> ResolveBFloat16(const std::string& precision, const std::string& device);

// Whether to fold BatchNorms into the convolutions for serving on device: "true", "false", or
// "auto" = on a CUDA device only (there each folded BatchNorm is one kernel less per step, which
// is what a step at batch 1 costs: 0.43 -> 0.35 ms per replayed step on an H100; on a CPU it
// measured no steady gain).
Result<bool> ResolveFoldBatchNorm(const std::string& setting, const std::string& device);
bool CpuHasNativeBFloat16();

}  // namespace spritediff
