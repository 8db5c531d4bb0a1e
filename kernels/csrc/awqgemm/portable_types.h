// Fixed-width integers for code that NVRTC also compiles (NVRTC has no
// <cstdint>).
#pragma once

#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned long size_t;
#else
#include <cstddef>
#include <cstdint>
#endif
