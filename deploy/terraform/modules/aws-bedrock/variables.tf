variable "region" {
  description = "AWS region the Bedrock runtime is called in."
  type        = string
  default     = "us-east-1"
}

variable "enabled_models" {
  description = "Bedrock model ids (or inference profile ids) skyfuse may invoke."
  type        = list(string)
}

variable "model_names" {
  description = "Bedrock model id => the model name callers and routing rules use (claude-3.5-sonnet); ids not listed keep their own name."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC for a private interface endpoint to bedrock-runtime; null: the public endpoint."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Subnets of the interface endpoint (with vpc_id)."
  type        = list(string)
  default     = []
}

variable "client_cidr_blocks" {
  description = "Networks allowed to reach the endpoint on 443 (where skyfuse runs)."
  type        = list(string)
  default     = []
}

variable "name_prefix" {
  description = "Prefix of the names of what this module creates."
  type        = string
  default     = "skyfuse"
}
