output "skyfuse_config" {
  value = module.ai_gateway.skyfuse_config
}

output "bedrock_invoke_policy_arn" {
  value = module.aws_ai.invoke_policy_arn
}

output "vertex_service_account" {
  value = module.gcp_ai.service_account_email
}

output "azure_openai_key" {
  value     = module.azure_ai.primary_access_key
  sensitive = true
}
