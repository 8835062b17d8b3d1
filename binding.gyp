{
  "targets": [
    {
      "target_name": "sluice_splice",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["native/addon.cc", "native/endpoint.cc", "native/pipe_pool.cc", "native/pump.cc"],
          "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
          "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
          "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-O2", "-fno-exceptions"]
        }, {
          "type": "none"
        }]
      ]
    }
  ]
}
