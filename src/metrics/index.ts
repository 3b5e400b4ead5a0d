// Public parts of the metrics module: the per-volume recorder and the Prometheus renderer.

export {
  MetricsRecorder,
  type MetricsRecorderOptions, type IoKind, type VolumeMetrics, type VolumeMetricsSnapshot
} from './recorder.js'
export {
  renderPrometheus, PROMETHEUS_CONTENT_TYPE,
  type PrometheusInput, type PrometheusVolume, type PrometheusStore
} from './prometheus.js'
