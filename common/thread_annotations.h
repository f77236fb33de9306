// Clang's thread-safety annotations behind macros (as in LevelDB and Abseil): under clang with
// -Wthread-safety the compiler checks that GUARDED_BY members are only touched with their
// mutex held; elsewhere the macros expand to nothing. `make thread-safety` builds the server
// library that way. libstdc++'s std::mutex carries no annotations, so annotated code locks a
// spritediff::Mutex (common/mutex.h), a std::mutex that is declared a capability.
//
// gRPC pulls in Abseil's internal header, which defines some of the same names without
// guards; it is included first where present and its definitions (the same attributes) win.
#pragma once

#if defined(__has_include)
#if __has_include(<absl/base/internal/thread_annotations.h>)
#include <absl/base/internal/thread_annotations.h>
#endif
#endif

#if defined(__clang__)
#define SPRITEDIFF_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define SPRITEDIFF_THREAD_ANNOTATION(x)
#endif

#ifndef GUARDED_BY
#define GUARDED_BY(x) SPRITEDIFF_THREAD_ANNOTATION(guarded_by(x))
#endif
#ifndef PT_GUARDED_BY
#define PT_GUARDED_BY(x) SPRITEDIFF_THREAD_ANNOTATION(pt_guarded_by(x))
#endif
#ifndef EXCLUSIVE_LOCKS_REQUIRED
#define EXCLUSIVE_LOCKS_REQUIRED(...) SPRITEDIFF_THREAD_ANNOTATION(exclusive_locks_required(__VA_ARGS__))
#endif
#ifndef LOCKS_EXCLUDED
#define LOCKS_EXCLUDED(...) SPRITEDIFF_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#endif
#ifndef ACQUIRED_AFTER
#define ACQUIRED_AFTER(...) SPRITEDIFF_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#endif
#ifndef NO_THREAD_SAFETY_ANALYSIS
#define NO_THREAD_SAFETY_ANALYSIS SPRITEDIFF_THREAD_ANNOTATION(no_thread_safety_analysis)
#endif
#ifndef REQUIRES
#define REQUIRES(...) SPRITEDIFF_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#endif
#ifndef CAPABILITY
#define CAPABILITY(x) SPRITEDIFF_THREAD_ANNOTATION(capability(x))
#endif
#ifndef SCOPED_CAPABILITY
#define SCOPED_CAPABILITY SPRITEDIFF_THREAD_ANNOTATION(scoped_lockable)
#endif
#ifndef ACQUIRE
#define ACQUIRE(...) SPRITEDIFF_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#endif
#ifndef RELEASE
#define RELEASE(...) SPRITEDIFF_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#endif
#ifndef ASSERT_HELD
#define ASSERT_HELD(...) SPRITEDIFF_THREAD_ANNOTATION(assert_capability(__VA_ARGS__))
#endif
