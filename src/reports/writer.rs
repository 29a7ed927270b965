//! Writing reports: server-side apply when the content changed, delete when asked.

use super::{PolicyReport, same_content};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The stored report already said the same: no API call.
    Unchanged,
    /// Server-side applied.
    Applied,
    /// Deleted.
    Deleted,
    /// Nothing to delete.
    Absent,
}

impl Written {
    /// A bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Written::Unchanged => "unchanged",
            Written::Applied => "applied",
            Written::Deleted => "deleted",
            Written::Absent => "absent",
        }
    }
}

/// Writes [`PolicyReport`]s with one server-side apply field manager.
#[derive(Clone)]
pub struct ReportWriter {
    client: kube::Client,
    field_manager: String,
}

impl ReportWriter {
    /// A writer applying as `field_manager`.
    pub fn new(client: kube::Client, field_manager: impl Into<String>) -> Self {
        ReportWriter {
            client,
            field_manager: field_manager.into(),
        }
    }

    fn api(&self, namespace: &str) -> Api<PolicyReport> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The stored report, if any.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PolicyReport>, kube::Error> {
        self.api(namespace).get_opt(name).await
    }

    /// Every stored report in all namespaces matching `label_selector` (one list request).
    pub async fn list_all(&self, label_selector: &str) -> Result<Vec<PolicyReport>, kube::Error> {
        let api: Api<PolicyReport> = Api::all(self.client.clone());
        Ok(api
            .list(&ListParams::default().labels(label_selector))
            .await?
            .items)
    }

    /// Applies `desired` unless `stored` (what the caller knows is in the cluster) already
    /// has the same content. The applied report comes back (its resourceVersion) in `Ok`.
    pub async fn apply(
        &self,
        desired: &PolicyReport,
        stored: Option<&PolicyReport>,
    ) -> Result<(Written, Option<PolicyReport>), kube::Error> {
        if stored.is_some_and(|s| same_content(desired, s)) {
            return Ok((Written::Unchanged, None));
        }
        let namespace = desired.metadata.namespace.as_deref().unwrap_or("default");
        let name = desired.metadata.name.as_deref().unwrap_or_default();
        let applied = self
            .api(namespace)
            .patch(
                name,
                &PatchParams::apply(&self.field_manager).force(),
                &Patch::Apply(desired),
            )
            .await?;
        Ok((Written::Applied, Some(applied)))
    }

    /// Reads the stored report, rebuilds `desired` against it (so unchanged results keep
    /// their timestamps) and applies it if anything changed: for writers that keep no copy.
    pub async fn sync(
        &self,
        builder: super::ReportBuilder,
        now: super::Timestamp,
    ) -> Result<Written, kube::Error> {
        let stored = self.get(&builder.namespace, &builder.name).await?;
        let desired = builder.build(stored.as_ref(), now);
        Ok(self.apply(&desired, stored.as_ref()).await?.0)
    }

    /// Deletes a report (absent is fine).
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<Written, kube::Error> {
        match self
            .api(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(Written::Deleted),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Written::Absent),
            Err(e) => Err(e),
        }
    }
}
