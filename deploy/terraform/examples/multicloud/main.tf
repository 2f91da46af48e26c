# The seed's multi-cloud root: one model module per cloud, and the ai-gateway module
# rendering skyfuse's config from their endpoints and a routing_rules map.
# `../rendered-skyfuse.toml` is what this renders with the values of
# terraform.tfvars.example (and a placeholder for the OCI endpoint OCID, known only
# after apply); scripts/check-deploy.sh checks it with `skyfuse config check`.

terraform {
  required_version = ">= 1.5"
}

provider "aws" {
  region = "us-east-1"
}

provider "azurerm" {
  features {}
}

provider "oci" {
  region = "eu-frankfurt-1"
}

provider "google" {
  project = var.gcp_project
  region  = "us-central1"
}

module "aws_ai" {
  source         = "../../modules/aws-bedrock"
  region         = "us-east-1"
  enabled_models = ["anthropic.claude-3-5-sonnet-20240620-v1:0", "meta.llama3-70b-instruct-v1:0"]
  model_names = {
    "anthropic.claude-3-5-sonnet-20240620-v1:0" = "claude-3.5-sonnet"
    "meta.llama3-70b-instruct-v1:0"             = "llama-3-70b"
  }
  vpc_id     = var.aws_vpc_id
  subnet_ids = var.aws_subnet_ids
}

module "azure_ai" {
  source         = "../../modules/azure-openai"
  resource_group = var.azure_rg
  location       = "westeurope"
  account_name   = "contoso-skyfuse"
  deployments = {
    "gpt-4o" = {
      model   = "gpt-4o"
      version = "2024-05-13"
      sku     = "Standard"
    }
    "gpt-4o-ptu" = {
      model    = "gpt-4o"
      version  = "2024-05-13"
      sku      = "ProvisionedManaged"
      capacity = 50
    }
  }
}

module "oci_ai" {
  source            = "../../modules/oci-genai"
  compartment_id    = var.oci_compartment
  region            = "eu-frankfurt-1"
  dedicated_cluster = true
  cluster_units     = 10
  signing           = var.oci_signing
}

module "gcp_ai" {
  source     = "../../modules/gcp-vertex"
  project_id = var.gcp_project
  region     = "us-central1"
  endpoints  = ["gemini-2.5-flash", "claude-3-5-sonnet-v2@20241022"]
  model_names = {
    "claude-3-5-sonnet-v2@20241022" = "claude-3.5-sonnet"
  }
}

module "ai_gateway" {
  source = "../../modules/ai-gateway"
  endpoints = {
    aws   = module.aws_ai.endpoint
    azure = module.azure_ai.endpoint
    oci   = module.oci_ai.endpoint
    gcp   = module.gcp_ai.endpoint
  }
  routing_rules = {
    "gpt-*"     = "azure"
    "claude-*"  = "aws"
    "gemini-*"  = "gcp"
    "command-*" = "oci"
  }
  default_model = "gpt-4o"
  output_path   = var.config_path
}
