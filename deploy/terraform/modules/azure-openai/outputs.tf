output "endpoint" {
  description = "What skyfuse needs to route to this account."
  value = {
    kind   = "azure_openai"
    region = var.location
    settings = {
      resource = azurerm_cognitive_account.openai.custom_subdomain_name
      api_key  = var.api_key_location
    }
    # Provisioned (PTU) deployments are reserved capacity: routing tries them first.
    models = { for name, deployment in var.deployments : name => {
      model     = deployment.model
      name      = name
      dedicated = startswith(deployment.sku, "Provisioned")
    } }
  }
}

output "primary_access_key" {
  description = "Store it where api_key_location points."
  value       = azurerm_cognitive_account.openai.primary_access_key
  sensitive   = true
}
