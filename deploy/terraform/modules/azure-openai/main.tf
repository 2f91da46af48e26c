# An Azure OpenAI account and its model deployments. The account key is an output
# (sensitive) for you to store where skyfuse's api_key location points (a Key Vault
# secret, a Kubernetes Secret); skyfuse's config only names that location.

terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.100"
    }
  }
}

resource "azurerm_cognitive_account" "openai" {
  name                  = var.account_name
  resource_group_name   = var.resource_group
  location              = var.location
  kind                  = "OpenAI"
  sku_name              = "S0"
  custom_subdomain_name = var.account_name
}

resource "azurerm_cognitive_deployment" "model" {
  for_each             = var.deployments
  name                 = each.key
  cognitive_account_id = azurerm_cognitive_account.openai.id

  model {
    format  = "OpenAI"
    name    = each.value.model
    version = each.value.version
  }

  sku {
    name     = each.value.sku
    capacity = each.value.capacity
  }
}
