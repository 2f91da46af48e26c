variable "aws_vpc_id" {
  type    = string
  default = null
}

variable "aws_subnet_ids" {
  type    = list(string)
  default = []
}

variable "azure_rg" {
  type = string
}

variable "oci_compartment" {
  type = string
}

variable "oci_signing" {
  description = "The API key skyfuse signs OCI requests with; private_key_location is a secret location."
  type = object({
    tenancy_id           = string
    user_id              = string
    key_fingerprint      = string
    private_key_location = string
  })
}

variable "gcp_project" {
  type = string
}

variable "config_path" {
  description = "Where to write the rendered skyfuse config."
  type        = string
  default     = "skyfuse.toml"
}
