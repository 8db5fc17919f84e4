//! Model vendors: what a pipeline step needs from one (files, batches, chat). OpenAI is the
//! one implementation today.

pub mod openai;
