//! Runtime authorisation with Cedar (in progress).
