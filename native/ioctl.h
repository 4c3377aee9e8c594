// Generic ioctl on an fd number with pointer fields filled in: the byte mover for iommufd and VFIO device requests.
#pragma once
#include <napi.h>

namespace viommu {

void InitIoctl(Napi::Env env, Napi::Object exports);

}  // namespace viommu
