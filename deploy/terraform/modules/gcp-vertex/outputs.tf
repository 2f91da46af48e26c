output "endpoint" {
  description = "What skyfuse needs to route to Vertex AI in this region."
  value = {
    kind   = "vertex"
    region = var.region
    settings = {
      project      = var.project_id
      metadata_url = "default"
    }
    models = { for id in var.endpoints : id => {
      model     = lookup(var.model_names, id, id)
      name      = id
      dedicated = false
    } }
  }
}

output "service_account_email" {
  description = "Bind it to skyfuse's Kubernetes service account (Workload Identity)."
  value       = google_service_account.skyfuse.email
}
