variable "project_id" {
  description = "GCP project that calls Vertex AI."
  type        = string
}

variable "region" {
  description = "Vertex AI region (where prompts are processed)."
  type        = string
  default     = "us-central1"
}

variable "endpoints" {
  description = "Models skyfuse may call: Gemini models and partner models (Claude) enabled in Model Garden."
  type        = list(string)
}

variable "model_names" {
  description = "Vertex model id => the model name routing uses; ids not listed keep their own name."
  type        = map(string)
  default     = {}
}

variable "service_account_id" {
  description = "Account id of the service account skyfuse runs as (Workload Identity on GKE, or the metadata server elsewhere on GCP)."
  type        = string
  default     = "skyfuse"
}
