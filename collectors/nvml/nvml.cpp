#include "collectors/nvml/nvml.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace tally::collectors {

Result<std::unique_ptr<NvmlLibrary>> NvmlLibrary::open(const std::string& library) {
  // RTLD_LOCAL: the library's symbols stay out of the global namespace, so a fake and a real one never mix.
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return make_error(ErrorCode::not_found, "NVML library {} cannot be loaded: {}", library,
                      why != nullptr ? why : "unknown dlopen error");
  }
  std::unique_ptr<NvmlLibrary> nvml(new NvmlLibrary(handle, library));
  std::vector<std::string> missing_required;
#define TALLY_NVML_RESOLVE(name, use)                                            \
  nvml->api_.name = reinterpret_cast<decltype(&::name)>(dlsym(handle, #name));   \
  if (nvml->api_.name == nullptr) {                                              \
    if ((use) == kNvmlRequired) missing_required.emplace_back(#name);            \
    else nvml->missing_optional_.emplace_back(#name, static_cast<NvmlUse>(use)); \
  }
  TALLY_NVML_FUNCTIONS(TALLY_NVML_RESOLVE)
#undef TALLY_NVML_RESOLVE
  if (!missing_required.empty()) {
    // Not initialised: the destructor must not call nvmlShutdown.
    nvml->api_.nvmlShutdown = nullptr;
    std::string names;
    for (const auto& name : missing_required) names += (names.empty() ? "" : ", ") + name;
    return make_error(ErrorCode::unsupported, "NVML library {} lacks required symbol(s) {}", library, names);
  }
  if (const nvmlReturn_t status = nvml->api_.nvmlInit_v2(); status != NVML_SUCCESS) {
    const std::string message = nvml->error_string(status);
    nvml->api_.nvmlShutdown = nullptr;
    return make_error(status == NVML_ERROR_DRIVER_NOT_LOADED ? ErrorCode::not_found : ErrorCode::io,
                      "NVML library {}: nvmlInit_v2 failed: {}", library, message);
  }
  if (nvml->api_.nvmlSystemGetDriverVersion != nullptr) {
    std::array<char, NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE> version{};
    if (nvml->api_.nvmlSystemGetDriverVersion(version.data(), version.size()) == NVML_SUCCESS) {
      nvml->driver_version_ = std::string(version.data(), strnlen(version.data(), version.size()));
    }
  }
  return nvml;
}

NvmlLibrary::~NvmlLibrary() {
  if (api_.nvmlShutdown != nullptr) api_.nvmlShutdown();
  dlclose(handle_);
}

std::vector<std::string> NvmlLibrary::missing_optional(NvmlUse user) const {
  std::vector<std::string> names;
  for (const auto& [name, use] : missing_optional_) {
    if ((use & user) != 0) names.push_back(name);
  }
  return names;
}

std::string NvmlLibrary::error_string(nvmlReturn_t result) const {
  const char* text = api_.nvmlErrorString != nullptr ? api_.nvmlErrorString(result) : nullptr;
  return text != nullptr ? std::string(text) : fmt::format("NVML error {}", static_cast<int>(result));
}

}  // namespace tally::collectors
