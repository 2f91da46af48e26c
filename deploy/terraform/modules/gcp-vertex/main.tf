# Vertex AI for skyfuse: the API turned on and a service account allowed to call it.
# skyfuse takes its tokens from the metadata server (GKE Workload Identity, GCE, Cloud
# Run), so no key file exists. Partner models (Claude) are enabled in Model Garden per
# project; Terraform cannot accept their terms.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

resource "google_project_service" "aiplatform" {
  project            = var.project_id
  service            = "aiplatform.googleapis.com"
  disable_on_destroy = false
}

resource "google_service_account" "skyfuse" {
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "skyfuse (Vertex AI prompts)"
}

resource "google_project_iam_member" "vertex_user" {
  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = "serviceAccount:${google_service_account.skyfuse.email}"
}
