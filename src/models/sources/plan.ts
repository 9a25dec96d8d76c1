// What a pull source resolves a reference to: a plan the puller runs. A source only reads
// metadata (a file listing, a manifest); every byte of the model itself is fetched by a
// fetcher chosen by the plan's `fetch.kind`, so a new way to get bytes (peers) is one
// more fetcher, and a new place to find models is one more source.

import type { Logger } from '../../logger.ts'
import type { ChunkManifest } from '../chunk-manifest.ts'
import type { ModelExtras, ProgressListener } from '../types.ts'
import type { OpenWritable } from '../writable.ts'

/** How to get one blob's bytes. Each kind has one fetcher; `http` is built in. */
export interface BlobFetch {
  kind: string
}

export interface HttpFetch extends BlobFetch {
  kind: 'http'
  url: string
  /** Sent with every request to `url` (e.g. a bearer token), not to the hosts it redirects to. */
  headers?: Record<string, string>
}

export interface PlannedBlob {
  fetch: BlobFetch
  /** 64 hex digits when the source publishes it; the download is refused unless it matches. */
  sha256?: string
  /** bytes, when the source publishes it: checked against the quota before any download */
  size?: number
  /** a short human label for errors, e.g. the file name */
  label: string
}

export interface PullPlan {
  /** the reference in canonical form, e.g. "hf:org/repo/model-Q4_K_M.gguf" */
  source: string
  /** the name the model is stored under unless the user picks one */
  name: string
  model: PlannedBlob
  /** what the source says about running the model (Ollama's template, params, system) */
  extras?: ModelExtras
}

export interface SourceContext {
  logger: Logger
  onProgress?: ProgressListener
  signal?: AbortSignal
}

export interface ModelSource {
  /** "hf", "ollama", "url", … : shown in errors */
  readonly id: string
  /** true when `ref` is written in this source's form */
  matches(ref: string): boolean
  plan(ref: string, ctx: SourceContext): Promise<PullPlan>
}

/** What a fetcher is given besides the blob: where to write, and whom to tell. */
export interface FetchContext {
  tmpDir: string
  logger: Logger
  openWritable: OpenWritable
  /** the progress status for this blob, e.g. "pulling 1a2b3c4d5e6f" */
  status: string
  onProgress?: ProgressListener
  signal?: AbortSignal
  /**
   * Called with the blob's size as soon as the fetcher knows it (undefined if it never
   * will), before the bytes are written: throws to refuse (quota), or returns the most
   * bytes the fetcher may write.
   */
  admit(size: number | undefined): number | undefined
}

/** A complete, hashed file under tmpDir, ready for the store to commit. */
export interface FetchedBlob {
  path: string
  sha256: string
  size: number
  /** the chunk manifest when the fetcher already checked the file against one (peers) */
  manifest?: ChunkManifest
  /** Removes what the fetcher kept beside the file to resume it; called after the commit. */
  settle(): Promise<void>
}

export type BlobFetcher = (blob: PlannedBlob, ctx: FetchContext) => Promise<FetchedBlob>
