// Process-wide compute settings: the device to run on and libtorch's thread pools.
// Debian's libtorch starts with one intra-op thread, so the count is always set explicitly.
#pragma once

#include <string>

#include "core/status.h"

namespace spritediff {

// "auto" -> cuda:0 when libtorch has CUDA and a GPU is present, else "cpu";
// "cpu", "cuda", "cuda:N" are checked against what is available.
Result<std::string> ResolveDevice(const std::string& requested);

// threads <= 0 means every hardware thread. Returns the count in effect.
int ConfigureThreads(int threads);

// Gives the calling thread its own intra-op thread count, so a training thread and the serving
// threads of one process can use different counts. libtorch initialises each thread's OpenMP
// count from a process-wide value on its first parallel op; this forces that first, then sets
// the thread's own (each torch-using thread calls it once when it starts).
void SetThreadIntraOpThreads(int threads);

}  // namespace spritediff
