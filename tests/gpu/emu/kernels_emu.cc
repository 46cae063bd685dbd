/* kernels-cuda/kernels.cu, compiled by the host's C++ compiler against the
 * CPU emulation of cuda_emu.h, for the emu backend plugin the tests use. */
#define STRATA_KERNELS_EMU 1
#include "../../../kernels-cuda/kernels.cu"
