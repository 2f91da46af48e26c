# Named `endpoints`, not the seed's `providers`: `providers` is a meta-argument of every
# module block in Terraform (which provider configurations a module gets), so a module
# input cannot have that name.
variable "endpoints" {
  description = "Provider id in the skyfuse config => an `endpoint` output of aws-bedrock, azure-openai, oci-genai or gcp-vertex."
  type = map(object({
    kind     = string
    region   = string
    settings = map(string)
    models = map(object({
      model     = string
      name      = string
      dedicated = bool
    }))
  }))
}

variable "routing_rules" {
  description = "Model glob => the endpoint (a key of `endpoints`) its requests go to: { \"gpt-*\" = \"azure\" }. Rendered in the lexical order of the globs (Terraform's map order) and the first match wins, so keep the globs from overlapping."
  type        = map(string)
}

variable "default_model" {
  description = "The model answering requests that name none."
  type        = string
}

variable "api_key_location" {
  description = "Where skyfuse reads its operator API key: a secret location, never the key."
  type        = string
  default     = "env:SKYFUSE_API_KEY"
}

variable "grpc_listen" {
  type    = string
  default = "0.0.0.0:50051"
}

variable "facade_listen" {
  type    = string
  default = "0.0.0.0:8080"
}

variable "metrics_listen" {
  type    = string
  default = "0.0.0.0:9464"
}

variable "data_dir" {
  type    = string
  default = "/var/lib/skyfuse/indexes/local"
}

variable "model_dir" {
  description = "The local MiniLM model folder (the image bakes it here)."
  type        = string
  default     = "/opt/skyfuse/models/all-MiniLM-L6-v2"
}

variable "output_path" {
  description = "Also write the config to this file (e.g. for a ConfigMap or a Helm value); null: output only."
  type        = string
  default     = null
}
