// The model store's public shape, shared by the runtime, the API and the CLI.

import type { ChunkManifest } from './chunk-manifest.ts'

export interface ModelDetails {
  format: 'gguf'
  architecture: string
  /** e.g. "llama" */
  family: string
  parameterCount: number
  /** human form, e.g. "25.7M" */
  parameterSize: string
  /** e.g. "F16", "Q4_K_M" */
  quantization: string
  contextLength: number
  chatTemplate: string | undefined
}

/** What a source publishes about running a model, beside the GGUF (Ollama's layers). */
export interface ModelExtras {
  /** a Go text/template prompt template (Ollama's `template` layer) */
  template?: string
  /** the default system prompt */
  system?: string
  /** default options: temperature, top_k, top_p, stop, num_ctx, … */
  params?: Record<string, unknown>
  license?: string
}

export interface ModelRecord {
  /** normalized "name:tag" (tag defaults to "latest") */
  name: string
  /** "sha256:<64 hex>" — the model's identity */
  digest: string
  size: number
  /** absolute path of the content-addressed blob */
  path: string
  modifiedAt: string
  details: ModelDetails
  /** the reference the model was pulled from, e.g. "ollama:llama3.2:1b" (absent for imports) */
  source?: string
  extras?: ModelExtras
}

export interface ProgressEvent {
  status: string
  total?: number
  completed?: number
  digest?: string
}

export type ProgressListener = (event: ProgressEvent) => void

export interface ModelStore {
  list(): ModelRecord[]
  /** Resolves a name (tag optional); generates a missing built-in model on first use. */
  resolve(name: string): Promise<ModelRecord>
  importFile(file: string, opts: { name: string; onProgress?: ProgressListener }): Promise<ModelRecord>
  /** Pulls `ref` (an http(s) URL, hf:…, ollama:…, or whatever a configured source understands). */
  pull(
    ref: string,
    opts: { name?: string; sha256?: string; onProgress?: ProgressListener; signal?: AbortSignal },
  ): Promise<ModelRecord>
  /** True when `ref` is something `pull` downloads (rather than a local or built-in name). */
  isPullable(ref: string): boolean
  remove(name: string): Promise<void>
  /** Calls `listener` after a model was added, re-pointed or removed; returns the unsubscribe. */
  onChange?(listener: () => void): () => void
}

export interface StoredManifest {
  digest: string
  /** CID of the manifest bytes */
  cid: string
  /** DAG-CBOR, as served to peers */
  bytes: Uint8Array
}

/** What peer transfer needs from the store: held blobs, their manifests, and a way in. */
export interface ModelBlobs {
  /** The store's scratch directory; a file adopted from here is moved, not copied. */
  readonly tmpDir: string
  /** The chunk manifest of a held blob (computed and stored on first request if missing). */
  manifest(digest: string): Promise<StoredManifest | undefined>
  /** The path of a blob some model name points at, or undefined. */
  blobPath(digest: string): string | undefined
  /**
   * Moves a complete, already verified file (inside tmpDir) into the store under `name`;
   * the manifest is stored with it. `file` is gone afterwards, stored or not.
   */
  adoptFile(
    file: string,
    meta: { name: string; manifest: ChunkManifest; label: string; onProgress?: ProgressListener },
  ): Promise<ModelRecord>
}
