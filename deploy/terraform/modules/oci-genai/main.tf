# OCI Generative AI for skyfuse: on-demand models need nothing created; with
# dedicated_cluster, a hosting cluster and an endpoint serving one model on it.

terraform {
  required_version = ">= 1.5"
  required_providers {
    oci = {
      source  = "oracle/oci"
      version = ">= 6.0"
    }
  }
}

resource "oci_generative_ai_dedicated_ai_cluster" "hosting" {
  count          = var.dedicated_cluster ? 1 : 0
  compartment_id = var.compartment_id
  type           = "HOSTING"
  unit_count     = var.cluster_units
  unit_shape     = var.cluster_unit_shape
  display_name   = "${var.name_prefix}-hosting"
}

resource "oci_generative_ai_endpoint" "dedicated" {
  count                   = var.dedicated_cluster ? 1 : 0
  compartment_id          = var.compartment_id
  dedicated_ai_cluster_id = oci_generative_ai_dedicated_ai_cluster.hosting[0].id
  model_id                = var.dedicated_model.model_id
  display_name            = "${var.name_prefix}-${var.dedicated_model.name}"

  content_moderation_config {
    is_enabled = false
  }
}
