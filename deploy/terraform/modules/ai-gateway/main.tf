# Renders a skyfuse config from the model modules' endpoints and a routing_rules map.
# Nothing here calls a cloud: the rendered file is checked with
#   skyfuse config check --config <file>
# and deployed as the Helm chart's `config` value, a ConfigMap or a file.

terraform {
  required_version = ">= 1.5"
  required_providers {
    local = {
      source  = "hashicorp/local"
      version = ">= 2.4"
    }
  }
}

locals {
  config = templatefile("${path.module}/skyfuse.toml.tftpl", {
    endpoints        = var.endpoints
    routing_rules    = var.routing_rules
    default_model    = var.default_model
    api_key_location = var.api_key_location
    grpc_listen      = var.grpc_listen
    facade_listen    = var.facade_listen
    metrics_listen   = var.metrics_listen
    data_dir         = var.data_dir
    model_dir        = var.model_dir
  })
}

resource "local_file" "config" {
  count           = var.output_path == null ? 0 : 1
  filename        = var.output_path
  content         = local.config
  file_permission = "0644"
}
