output "endpoint" {
  description = "What skyfuse needs to route to OCI Generative AI in this region."
  value = {
    kind   = "oci"
    region = var.region
    settings = {
      compartment_id  = var.compartment_id
      tenancy_id      = var.signing.tenancy_id
      user_id         = var.signing.user_id
      key_fingerprint = var.signing.key_fingerprint
      private_key     = var.signing.private_key_location
    }
    models = merge(
      { for name, id in var.on_demand_models : name => {
        model     = name
        name      = id
        dedicated = false
      } },
      # A dedicated deployment's wire id is the endpoint OCID (servingType DEDICATED);
      # routing tries it before the on-demand one of the same model.
      var.dedicated_cluster ? { "${var.dedicated_model.name}-dedicated" = {
        model     = var.dedicated_model.name
        name      = oci_generative_ai_endpoint.dedicated[0].id
        dedicated = true
      } } : {},
    )
  }
}

output "dedicated_endpoint_id" {
  value = var.dedicated_cluster ? oci_generative_ai_endpoint.dedicated[0].id : null
}
