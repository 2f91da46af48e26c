output "skyfuse_config" {
  description = "The rendered skyfuse config (TOML)."
  value       = local.config

  precondition {
    condition     = alltrue([for endpoint in values(var.routing_rules) : contains(keys(var.endpoints), endpoint)])
    error_message = "every routing_rules value must be a key of endpoints."
  }
}
