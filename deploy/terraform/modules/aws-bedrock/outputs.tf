# `endpoint` is the shape every model module outputs and modules/ai-gateway reads.
output "endpoint" {
  description = "What skyfuse needs to route to this Bedrock region."
  value = {
    kind   = "bedrock"
    region = var.region
    # With private DNS on the interface endpoint the public name resolves privately,
    # so skyfuse keeps its derived base_url; credentials come from the role it runs as
    # (web identity, container or instance credentials).
    settings            = {}
    # One entry per [[deployment]]: the model name routing uses, the wire id, and
    # whether it is reserved capacity (tried first).
    models = { for id in var.enabled_models : id => {
      model     = lookup(var.model_names, id, id)
      name      = id
      dedicated = false
    } }
  }
}

output "invoke_policy_arn" {
  description = "Attach to the role skyfuse runs as."
  value       = aws_iam_policy.invoke.arn
}

output "vpc_endpoint_id" {
  value = local.private ? aws_vpc_endpoint.runtime[0].id : null
}
