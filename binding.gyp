{
  "targets": [
    {
      "target_name": "viommu_native",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/file_descriptor.cc",
        "native/shared_memory.cc",
        "native/message_socket.cc",
        "native/event_fd.cc",
        "native/fd_watch.cc",
        "native/kvm.cc",
        "native/kvm_run.cc",
        "native/ioctl.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror=return-type", "-fno-exceptions"],
      "cflags_cc!": ["-fno-rtti"]
    }
  ]
}
