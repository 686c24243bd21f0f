//! Pushing a stored image: layer blobs streamed from the content store, then the config,
//! then the manifest verbatim (so the pushed image has the same digest).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::{ImageError, Inner};
use crate::reference::Reference;

const PUSH_CHUNK: usize = 4 * 1024 * 1024;

pub(crate) async fn push(
    inner: &Arc<Inner>,
    local: &Reference,
    target: &Reference,
) -> Result<(), ImageError> {
    let _shared = inner.op.read().await;
    let rec = inner
        .meta()
        .images
        .get(&local.to_string())
        .cloned()
        .ok_or_else(|| ImageError::NotFound {
            reference: local.to_string(),
        })?;
    for layer in &rec.layers {
        let d = &layer.blob.digest;
        let path = inner.content.path(d);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| ImageError::Content {
                reference: local.to_string(),
                layer: d.clone(),
                source: super::content::io_err("open", &path)(source),
            })?;
        let chunks = futures::stream::unfold(Some(file), |state| async move {
            let mut f = state?;
            let mut buf = vec![0u8; PUSH_CHUNK];
            let mut filled = 0;
            // fill whole chunks: each stream item becomes one PATCH request
            loop {
                match f.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break;
                        }
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(Bytes::from(buf)), Some(f)))
        });
        inner
            .registry
            .push_blob_stream(target, d, layer.blob.size, chunks)
            .await?;
    }
    let config = inner.content.read(&rec.config_digest)?;
    inner
        .registry
        .push_blob(target, &rec.config_digest, Bytes::from(config))
        .await?;
    let manifest = inner.content.read(&rec.manifest_digest)?;
    inner
        .registry
        .push_manifest(target, &rec.manifest_media_type, Bytes::from(manifest))
        .await?;
    tracing::info!(image = %local, to = %target, digest = %rec.manifest_digest, "pushed");
    Ok(())
}
