//! A scripted chat provider for routing tests: each call plays the next script
//! (fail at once, stream with pauses, break mid-stream...), on tokio's clock so
//! tests can pause time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};

use crate::error::{Error, Result};
use crate::llm::{ChatEvent, ChatProvider, ChatRequest, FinishReason, ProviderInfo, Usage};

#[derive(Debug, Clone)]
pub enum Step {
    Wait(Duration),
    Text(&'static str),
    Finish(Option<Usage>),
    Fail(Error),
}

#[derive(Debug, Clone)]
pub enum Script {
    /// `chat_stream` itself fails, after a wait.
    Refuse(Duration, Error),
    Stream(Vec<Step>),
    /// `chat_stream` panics (a bug in a provider adapter).
    Panic,
}

impl Script {
    pub fn answer(text: &'static str) -> Self {
        Self::Stream(vec![
            Step::Text(text),
            Step::Finish(Some(Usage {
                input_tokens: 1_000,
                output_tokens: 100,
                cached_input_tokens: 0,
                estimated: false,
            })),
        ])
    }

    pub fn refuse(error: Error) -> Self {
        Self::Refuse(Duration::ZERO, error)
    }
}

pub struct Scripted {
    info: Arc<ProviderInfo>,
    scripts: Mutex<VecDeque<Script>>,
    /// Played when the queue is empty.
    otherwise: Script,
    pub calls: AtomicUsize,
}

impl Scripted {
    pub fn new(id: &str, model: &str, cloud: &str, dedicated: bool, otherwise: Script) -> Self {
        Self {
            info: Arc::new(ProviderInfo {
                id: id.into(),
                model: model.into(),
                deployment: model.into(),
                dedicated,
                cloud: cloud.into(),
                region: format!("{cloud}-region"),
                regions: vec![format!("{cloud}-region")],
                input_per_1m_usd: 0.0,
                output_per_1m_usd: 0.0,
            }),
            scripts: Mutex::new(VecDeque::new()),
            otherwise,
            calls: AtomicUsize::new(0),
        }
    }

    pub fn in_region(mut self, region: &str) -> Self {
        let info = Arc::make_mut(&mut self.info);
        info.region = region.into();
        info.regions = vec![region.into()];
        self
    }

    pub fn then(self, script: Script) -> Self {
        self.scripts.lock().unwrap().push_back(script);
        self
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ChatProvider for Scripted {
    fn info(&self) -> &Arc<ProviderInfo> {
        &self.info
    }

    async fn chat_stream(
        &self,
        _request: &ChatRequest,
        _deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.otherwise.clone());
        match script {
            Script::Panic => panic!("scripted provider panic"),
            Script::Refuse(wait, error) => {
                tokio::time::sleep(wait).await;
                Err(error)
            }
            Script::Stream(steps) => {
                Ok(stream::unfold(steps.into_iter(), |mut steps| async move {
                    loop {
                        match steps.next()? {
                            Step::Wait(wait) => tokio::time::sleep(wait).await,
                            Step::Text(text) => {
                                return Some((Ok(ChatEvent::Delta(text.into())), steps));
                            }
                            Step::Finish(usage) => {
                                let event = ChatEvent::Finish {
                                    reason: FinishReason::Stop,
                                    usage,
                                };
                                return Some((Ok(event), steps));
                            }
                            Step::Fail(error) => return Some((Err(error), steps)),
                        }
                    }
                })
                .boxed())
            }
        }
    }
}
