variable "resource_group" {
  description = "Resource group of the Azure OpenAI account."
  type        = string
}

variable "location" {
  description = "Azure region of the account (where prompts are processed)."
  type        = string
  default     = "westeurope"
}

variable "account_name" {
  description = "Account name, also its subdomain: https://{name}.openai.azure.com."
  type        = string
  default     = "skyfuse-openai"
}

variable "deployments" {
  description = "Deployment name => model, model version and SKU (Standard, GlobalStandard, ProvisionedManaged for PTUs)."
  type = map(object({
    model    = string
    version  = string
    sku      = string
    capacity = optional(number, 10)
  }))
}

variable "api_key_location" {
  description = "Where skyfuse reads the account key: a secret location (env:NAME, azure-kv:VAULT/NAME), never the key."
  type        = string
  default     = "env:AZURE_OPENAI_API_KEY"
}
