variable "compartment_id" {
  description = "Compartment of the dedicated AI cluster and endpoint."
  type        = string
}

variable "region" {
  description = "OCI region of Generative AI inference."
  type        = string
  default     = "eu-frankfurt-1"
}

variable "on_demand_models" {
  description = "Model name => OCI model id, served on demand (priced per call)."
  type        = map(string)
  default = {
    "command-r-plus" = "cohere.command-r-plus-08-2024"
  }
}

variable "dedicated_cluster" {
  description = "Host one model on a dedicated AI cluster (flat-rate units, private capacity)."
  type        = bool
  default     = false
}

variable "cluster_units" {
  description = "Units of the dedicated cluster."
  type        = number
  default     = 1
}

variable "cluster_unit_shape" {
  description = "Unit shape of the dedicated cluster, matching the hosted model (LARGE_COHERE_V2_2, ...)."
  type        = string
  default     = "LARGE_COHERE_V2_2"
}

variable "dedicated_model" {
  description = "Model name => OCI model OCID hosted on the dedicated cluster."
  type = object({
    name     = string
    model_id = string
  })
  default = {
    name     = "command-r-plus"
    model_id = "ocid1.generativeaimodel.oc1.eu-frankfurt-1.example"
  }
}

variable "signing" {
  description = "The API key skyfuse signs requests with: tenancy, user, fingerprint, and where the PEM lives (a secret location)."
  type = object({
    tenancy_id           = string
    user_id              = string
    key_fingerprint      = string
    private_key_location = string
  })
}

variable "name_prefix" {
  type    = string
  default = "skyfuse"
}
