# Bedrock for skyfuse: the right to invoke the enabled models (an IAM policy to attach to
# the role skyfuse runs as: IRSA, ECS task role, instance profile) and, with a VPC, a
# private interface endpoint so prompts never cross the internet. Model access itself
# is granted per account in the Bedrock console; Terraform cannot request it.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

data "aws_partition" "current" {}

locals {
  private    = var.vpc_id != null
  model_arns = [for id in var.enabled_models : "arn:${data.aws_partition.current.partition}:bedrock:${var.region}::foundation-model/${id}"]
  # Cross-region inference profiles are invoked by id too; allow them alongside.
  profile_arns = [for id in var.enabled_models : "arn:${data.aws_partition.current.partition}:bedrock:${var.region}:*:inference-profile/${id}"]
}

data "aws_iam_policy_document" "invoke" {
  statement {
    sid       = "InvokeEnabledModels"
    actions   = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
    resources = concat(local.model_arns, local.profile_arns)
  }
}

resource "aws_iam_policy" "invoke" {
  name        = "${var.name_prefix}-bedrock-invoke"
  description = "skyfuse: invoke the Bedrock models it routes to"
  policy      = data.aws_iam_policy_document.invoke.json
}

resource "aws_security_group" "endpoint" {
  count       = local.private ? 1 : 0
  name        = "${var.name_prefix}-bedrock-runtime"
  description = "HTTPS from skyfuse to the bedrock-runtime endpoint"
  vpc_id      = var.vpc_id

  ingress {
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.client_cidr_blocks
  }
}

resource "aws_vpc_endpoint" "runtime" {
  count               = local.private ? 1 : 0
  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${var.region}.bedrock-runtime"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoint[0].id]
  private_dns_enabled = true
}
